"""``bioseq pretrain``: LightningCLI over ``models.lm.LanguageModel`` and any LightningDataModule.

Subcommands ``fit``, ``validate`` and ``test``; ``--config NAME_OR_PATH`` (a shipped config by name, e.g.
``hyenadna-tiny-hg38``, or a YAML file; repeatable), ``--print_config``, ``--ckpt_path PATH|last`` to
resume, every ``Trainer`` flag (``--trainer.precision bf16-mixed``, ``--trainer.devices 4
--trainer.strategy ddp``, ...). The data module is chosen in the YAML by ``data.class_path`` (e.g.
``bioseq.datamodules.genome.GenomeDataModule``) and its arguments can be overridden on the command line
(``--data.fasta genome.fa``). The wrapper (run directory, ``--ckpt_path last``, one-line errors, quiet
output) is :mod:`bioseq.commands.lightning_cli`.

Example::

    bioseq pretrain fit --config hyenadna-tiny-hg38 --data.fasta hg38.fa
    bioseq pretrain fit --config hyenadna-tiny-hg38 --data.fasta hg38.fa --ckpt_path last   # resume
"""

from __future__ import annotations

HELP = "Pretrain a backbone with a causal or masked LM objective (LightningCLI: fit/validate/test)."


def build_cli(argv: list[str], run: bool = True):
    """The ``LightningCLI`` object (``run=False`` parses and instantiates without running)."""
    from bioseq.commands.lightning_cli import run_cli

    return run_cli("pretrain", list(argv), run=run)


def main(argv: list[str]) -> int:
    """Entry point used by ``bioseq.cli``; bad arguments and configs exit with status 2."""
    from bioseq.commands.lightning_cli import main as cli_main

    return cli_main("pretrain", list(argv))
