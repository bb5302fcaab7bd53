"""Subcommands of the ``bioseq`` console script: one module each, ``main(argv) -> int``.

This is the wiring layer: these modules (and ``bioseq.cli``) are the only parts of ``bioseq`` that
may import Lightning or the sibling packages ``datamodules``, ``models`` and ``finetune``.
"""
