"""``bioseq pretrain``: LightningCLI over ``models.lm.LanguageModel`` and any LightningDataModule.

Subcommands ``fit``, ``validate`` and ``test``; ``--config file.yaml`` (repeatable), ``--print_config``,
``--ckpt_path`` to resume, every ``Trainer`` flag (``--trainer.precision bf16-mixed``,
``--trainer.devices 4 --trainer.strategy ddp``, ...). The data module is chosen in the YAML by
``data.class_path`` (e.g. ``datamodules.genome.GenomeDataModule``) and its arguments can be overridden
on the command line (``--data.fasta genome.fa``). Shipped recipes live in ``configs/pretrain/``.

Example::

    bioseq pretrain fit --config configs/pretrain/hyenadna-tiny-hg38.yaml --data.fasta hg38.fa
    bioseq pretrain fit --config run/config.yaml --ckpt_path run/checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

HELP = "Pretrain a backbone with a causal or masked LM objective (LightningCLI: fit/validate/test)."


def build_cli(argv: list[str], run: bool = True):
    """The ``LightningCLI`` object (``run=False`` parses and instantiates without running)."""
    import sys

    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from bioseq.models.lm import LanguageModel

    class PretrainCLI(LightningCLI):
        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            full = LightningCLI.subcommands()
            return {name: full[name] for name in ("fit", "validate", "test")}

    saved = sys.argv
    sys.argv = ["bioseq pretrain", *argv]  # LightningCLI reads sys.argv; set it rather than warn
    try:
        return PretrainCLI(
            LanguageModel,
            L.LightningDataModule,
            subclass_mode_data=True,
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "bioseq pretrain", "description": HELP},
            seed_everything_default=2222,
        )
    finally:
        sys.argv = saved


def main(argv: list[str]) -> int:
    """Entry point used by ``bioseq.cli``; argparse usage errors exit with status 2."""
    build_cli(list(argv))
    return 0
