"""``bioseq finetune``: LightningCLI over :class:`finetune.classifier.SequenceClassifier` and
:class:`datamodules.benchmarks.SequenceClassificationDataModule`.

Subcommands ``fit / validate / test / predict`` with ``--config``, ``--print_config`` and ``--ckpt_path``.
After ``fit`` the best checkpoint (the ``ModelCheckpoint`` of the config, monitored on validation) is
evaluated once on the test split when there is one (``--test_after_fit=false`` turns this off); test data
is never used for selection. Examples::

    bioseq finetune fit --config configs/finetune/genomic_benchmarks/human_nontata_promoters.yaml \\
        --data.data_dir=~/.genomic_benchmarks --model.backbone=checkpoints/hyenadna-tiny-1k
    bioseq finetune fit --config configs/finetune/nucleotide_transformer/H3.yaml \\
        --data.train_file=H3_train.fna --data.test_file=H3_test.fna --trainer.fast_dev_run=true
"""

from __future__ import annotations

HELP = "Finetune a backbone on a labelled sequence task (LightningCLI: fit/validate/test/predict)."


def main(argv: list[str]) -> int:
    from bioseq.finetune.classifier import run_finetune_cli

    run_finetune_cli(argv)
    return 0
