"""``bioseq benchmark SUITE``: finetune one backbone on every dataset of a suite x seeds, resumably, and
write ``results.csv``, ``results.md`` (mean ± std beside a k-mer baseline and published numbers) and
``results.png``. See :mod:`finetune.suite`.

Examples::

    bioseq benchmark genomic-benchmarks --backbone checkpoints/hyenadna-tiny-1k \\
        --data-dir ~/.genomic_benchmarks --seeds 0 1 2 4 5 --out results/gb
    bioseq benchmark human_nontata_promoters,human_enhancers_cohn --backbone hyenadna-tiny-1k \\
        --data-file human_nontata_promoters:train=tr.tsv,test=te.tsv --override trainer.max_epochs=3
"""

from __future__ import annotations

import argparse

HELP = "Run a benchmark suite (datasets x seeds) and write the results table beside published numbers."


def _parse_data_files(specs: list[str]) -> dict:
    from bioseq.errors import BioseqError

    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        files = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
        if not name or not files or set(files) - {"train", "val", "test"}:
            raise BioseqError(f"--data-file '{spec}': expected NAME:train=PATH,test=PATH[,val=PATH]")
        from bioseq.finetune.published import dataset_from_path, known_datasets

        for split, path in files.items():
            found = dataset_from_path(path)
            if found and found != name and name in known_datasets():
                raise BioseqError(f"--data-file {name}: the {split} file {path} is from {found}, not {name} "
                                  "(the table would show another dataset's published numbers)")
        out[name] = files
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bioseq benchmark",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "suite", help="genomic-benchmarks | nucleotide-transformer | comma list of datasets or YAMLs"
    )
    p.add_argument(
        "--backbone",
        default="hyenadna-tiny-1k",
        help="checkpoint directory (any backbone of the contract) or preset name (random init)",
    )
    p.add_argument("--out", default="benchmark_results", help="output directory (reruns resume here)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-dir", help="root holding each dataset (passed as --data.data_dir)")
    p.add_argument(
        "--data-file",
        action="append",
        default=[],
        metavar="NAME:train=P,test=P",
        help="explicit files for one dataset (repeatable); wins over --data-dir",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra finetune CLI override for every run, e.g. trainer.max_epochs=10 (repeatable)",
    )
    p.add_argument("--kmer", type=int, default=6, help="k of the k-mer baseline column (0 = none)")
    p.add_argument("--label", help="name of our column in the table (default: the backbone)")
    a = p.parse_args(argv)

    from bioseq.commands.lightning_cli import run_finetune_cli
    from bioseq.finetune.suite import run_suite

    rows = run_suite(
        a.suite,
        a.backbone,
        a.out,
        seeds=a.seeds,
        data_dir=a.data_dir,
        data_files=_parse_data_files(a.data_file),
        overrides=a.override,
        kmer=a.kmer or None,
        label=a.label,
        run_cli=run_finetune_cli,
    )
    print(f"{len(rows)} runs; wrote {a.out}/results.csv, results.md, results.png")
    print(open(f"{a.out}/results.md").read())
    return 0
