"""``bioseq finetune``: LightningCLI over :class:`bioseq.finetune.classifier.SequenceClassifier` and
:class:`bioseq.datamodules.benchmarks.SequenceClassificationDataModule`.

Subcommands ``fit / validate / test / predict`` with ``--config NAME_OR_PATH`` (a shipped config by name,
e.g. ``human_nontata_promoters``, or a YAML file), ``--print_config`` and ``--ckpt_path PATH|last``. The
class count (``model.num_classes``) and the problem type are taken from the data. After ``fit`` the best
checkpoint (the ``ModelCheckpoint`` of the config, monitored on validation) is evaluated once on the test
split when there is one (``--test_after_fit=false`` turns this off), and the weights tested are named; test
data is never used for selection. The wrapper is :mod:`bioseq.commands.lightning_cli`. Examples::

    bioseq finetune fit --config human_nontata_promoters \\
        --data.data_dir=~/.genomic_benchmarks --model.backbone=checkpoints/hyenadna-tiny-1k
    bioseq finetune fit --config nucleotide_transformer/H3 \\
        --data.train_file=H3_train.fna --data.test_file=H3_test.fna --trainer.fast_dev_run=true
"""

from __future__ import annotations

HELP = "Finetune a backbone on a labelled sequence task (LightningCLI: fit/validate/test/predict)."


def main(argv: list[str]) -> int:
    from bioseq.commands.lightning_cli import main as cli_main

    return cli_main("finetune", list(argv))
