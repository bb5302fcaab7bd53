"""Benchmark suite runner: (datasets x seeds) finetuning runs for one backbone -> results table + chart.

A suite is ``"genomic-benchmarks"``, ``"nucleotide-transformer"``, or a list of items, each a dataset /
task name (resolved to ``configs/finetune/<family>/<name>.yaml``) or a path to a config YAML. Each run is
``bioseq finetune fit`` on that config with ``--model.backbone``, ``--seed_everything`` and the data
location set, then a test of the best validation checkpoint. A run writes ``<out>/runs/<dataset>/seed<k>/
result.json`` last, atomically; a rerun skips runs that have it (resumable).

Outputs in ``out``:
  * ``results.csv`` -- one row per (dataset, seed): the task metric and all test metrics;
  * ``results.md``  -- mean ± std over seeds per dataset beside the k-mer baseline (when computed) and the
    published numbers (``finetune.published``), with citations;
  * ``results.png`` -- grouped bar chart (matplotlib, Agg backend).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioseq.config_files import config_root
from bioseq.errors import BioseqError
from bioseq.finetune.published import CITATIONS, published_for

CONFIG_ROOT = config_root() / "finetune"  # the configs shipped in the package (bioseq.configs)
SUITES = {"genomic-benchmarks": "genomic_benchmarks", "nucleotide-transformer": "nucleotide_transformer"}


@dataclass
class SuiteItem:
    name: str
    config: Path
    metric: str


def _metric_of(config: Path) -> str:
    import yaml

    cfg = yaml.safe_load(config.read_text()) or {}
    for cb in (cfg.get("trainer") or {}).get("callbacks") or []:
        monitor = (cb.get("init_args") or {}).get("monitor")
        if monitor:
            return monitor.split("/", 1)[-1]
    return "accuracy"


def resolve_suite(suite: str | list[str], config_root: Path = CONFIG_ROOT) -> list[SuiteItem]:
    """Expand a suite name / comma list / list of names or YAML paths into :class:`SuiteItem` s."""
    items = [s for part in ([suite] if isinstance(suite, str) else suite) for s in str(part).split(",") if s]
    out: list[SuiteItem] = []
    for item in items:
        if item in SUITES:
            for cfg in sorted((config_root / SUITES[item]).glob("*.yaml")):
                out.append(SuiteItem(cfg.stem, cfg, _metric_of(cfg)))
            continue
        path = Path(item)
        if path.suffix in (".yaml", ".yml"):
            if not path.exists():
                raise BioseqError(f"{path}: no such config")
            out.append(SuiteItem(path.stem, path, _metric_of(path)))
            continue
        found = [p for fam in SUITES.values() for p in [config_root / fam / f"{item}.yaml"] if p.exists()]
        if not found:
            raise BioseqError(
                f"unknown suite item '{item}' (a suite name: {', '.join(SUITES)}; a dataset with "
                f"a config under {config_root}; or a YAML path)"
            )
        out.append(SuiteItem(item, found[0], _metric_of(found[0])))
    if not out:
        raise BioseqError("empty suite")
    return out


def _run_one(
    item: SuiteItem,
    seed: int,
    backbone: str,
    run_dir: Path,
    data_args: list[str],
    overrides: list[str],
    run_cli=None,
) -> dict:
    """One ``fit`` + best-checkpoint ``test`` through the finetune CLI; returns the test metrics.

    ``run_cli(argv, prog=...)`` runs ``bioseq finetune`` and returns the LightningCLI object (the command
    layer passes ``bioseq.commands.lightning_cli.run_finetune_cli``).
    """
    if run_cli is None:
        raise BioseqError("run_suite needs run_cli (bioseq.commands.lightning_cli.run_finetune_cli)")
    args = [
        "fit",
        "--config",
        str(item.config),
        f"--model.backbone={backbone}",
        f"--seed_everything={seed}",
        f"--data.split_seed={seed}",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        *data_args,
        *[a if a.startswith("--") else f"--{a}" for a in overrides],
    ]
    t0 = time.time()
    cli = run_cli(args, prog="bioseq benchmark")
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    if not metrics:
        raise BioseqError(f"{item.name} seed {seed}: no test metrics (does the dataset have a test split?)")
    ckpt = cli.trainer.checkpoint_callback
    from bioseq.models import PRESETS

    random_weights = isinstance(backbone, str) and backbone in PRESETS and not Path(backbone).is_dir()
    best_val = (
        float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else math.nan
    )
    return {
        "dataset": item.name,
        "seed": seed,
        "backbone": backbone,
        "metric": item.metric,
        "value": metrics.get(f"test/{item.metric}", math.nan),
        "best_val": best_val,
        "minutes": round((time.time() - t0) / 60, 3),
        "random_weights": bool(random_weights),
        "smoke": bool(cli.trainer.fast_dev_run),
        **{k.split("/", 1)[1]: v for k, v in metrics.items()},
    }


def _data_args(item: SuiteItem, data_dir: str | None, data_files: dict | None) -> list[str]:
    if data_files and item.name in data_files:
        files = data_files[item.name]
        return [f"--data.{k}_file={v}" for k, v in files.items()]
    return [f"--data.data_dir={data_dir}"] if data_dir else []


def kmer_baseline(item: SuiteItem, data_args: list[str], k: int = 6, seed: int = 0) -> dict:
    """k-mer logistic-regression baseline on the same train (train + val) / test data as the runs."""
    import yaml

    from bioseq.datamodules.benchmarks import SequenceClassificationDataModule
    from bioseq.finetune.probe import fit_probe, kmer_features

    cfg = (yaml.safe_load(item.config.read_text()) or {}).get("data") or {}
    for a in data_args:
        key, value = a[len("--data.") :].split("=", 1)
        cfg[key] = value
    dm = SequenceClassificationDataModule(**{**cfg, "val_fraction": 0.0})
    train, test = dm._read("train"), dm._read("test")
    if train is None or test is None:
        raise BioseqError(f"{item.name}: k-mer baseline needs train and test data")
    res = fit_probe(
        kmer_features(train.sequences, k),
        train.labels,
        kmer_features(test.sequences, k),
        test.labels,
        seed=seed,
    )
    return {"dataset": item.name, "k": k, "value": res.get(item.metric, math.nan), **res}


def _atomic_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_suite(
    suite: str | list[str],
    backbone: str,
    out_dir: str | os.PathLike,
    *,
    seeds=(0, 1, 2),
    data_dir: str | None = None,
    data_files: dict | None = None,
    overrides: list[str] = (),
    kmer: int | None = 6,
    label: str | None = None,
    log=print,
    run_cli=None,
) -> list[dict]:
    """Run every (item, seed) not already finished, then write the tables and the chart. Returns the rows.

    ``run_cli``: the finetune CLI runner (see :func:`_run_one`)."""
    out = Path(out_dir)
    items = resolve_suite(suite)
    rows = []
    for item in items:
        d_args = _data_args(item, data_dir, data_files)
        for seed in seeds:
            run_dir = out / "runs" / item.name / f"seed{seed}"
            result_file = run_dir / "result.json"
            if result_file.exists():
                log(f"[skip] {item.name} seed {seed}: finished earlier ({result_file})")
                rows.append(json.loads(result_file.read_text()))
                continue
            log(f"[run ] {item.name} seed {seed}")
            runner = {"run_cli": run_cli} if run_cli is not None else {}
            row = _run_one(item, seed, backbone, run_dir, d_args, list(overrides), **runner)
            _atomic_json(result_file, row)
            rows.append(row)
    baselines = {}
    if kmer:
        for item in items:
            bfile = out / "runs" / item.name / f"kmer{kmer}.json"
            if bfile.exists():
                baselines[item.name] = json.loads(bfile.read_text())
                continue
            log(f"[kmer] {item.name} k={kmer}")
            baselines[item.name] = kmer_baseline(item, _data_args(item, data_dir, data_files), kmer)
            _atomic_json(bfile, baselines[item.name])
    write_results(rows, out, baselines=baselines, label=label or backbone, kmer=kmer)
    return rows


MARK_NOTES = {
    "(random weights)": "the backbone was a preset name, i.e. randomly initialised, not pretrained",
    "(smoke run: fast_dev_run)": "smoke run (trainer.fast_dev_run): one batch of training and testing",
}


def run_marks(rows: list[dict]) -> list[str]:
    """The markers a results table carries: ``(random weights)`` and ``(smoke run: fast_dev_run)`` when
    any row is one (CSV cells come back as strings)."""
    def flag(r, key):
        return str(r.get(key, "")).strip().lower() in ("true", "1")

    marks = []
    if any(flag(r, "random_weights") for r in rows):
        marks.append("(random weights)")
    if any(flag(r, "smoke") for r in rows):
        marks.append("(smoke run: fast_dev_run)")
    return marks


def summarize(rows: list[dict]) -> dict[str, dict]:
    """dataset -> {"metric", "mean", "std" (sample std; 0 for one seed), "n"}."""
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["dataset"], {"metric": r["metric"], "values": []})["values"].append(
            float(r["value"])
        )
    for s in out.values():
        v = np.asarray(s.pop("values"))
        s.update(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0, n=len(v))
    return out


def write_results(
    rows: list[dict],
    out: str | os.PathLike,
    *,
    baselines: dict | None = None,
    label: str = "ours",
    kmer: int | None = 6,
    title: str = "Benchmark results",
) -> None:
    """``results.csv``, ``results.md`` and ``results.png`` from run rows (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    baselines = baselines or {}
    keys = ["dataset", "seed", "backbone", "metric", "value", "best_val", "minutes", "random_weights",
            "smoke"]
    extra = sorted({k for r in rows for k in r} - set(keys))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys + extra)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys + extra})
    summary = summarize(rows)
    sources = sorted({s for d in summary for s in published_for(d)}, key=list(CITATIONS).index)
    kcol = f"{kmer}-mer LR" if kmer else None
    marks = run_marks(rows)
    label = f"{label} {' '.join(marks)}" if marks else label
    head = ["dataset", "metric", f"{label} (mean ± std, n)"] + ([kcol] if baselines else []) + sources
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, s in summary.items():
        pub = published_for(d)
        cells = [d, s["metric"], f"{s['mean']:.3f} ± {s['std']:.3f} ({s['n']})"]
        if baselines:
            b = baselines.get(d)
            cells.append(f"{b['value']:.3f}" if b else "–")
        cells += [f"{pub[src]:.3f}" if src in pub else "–" for src in sources]
        lines.append("| " + " | ".join(cells) + " |")
    if marks:
        lines += ["", "Not comparable with the published numbers: "
                  + "; ".join(MARK_NOTES[m] for m in marks) + "."]
    lines += ["", "Published numbers (fractions):"] + [f"- {src}: {CITATIONS[src]}" for src in sources]
    if baselines:
        lines.append(
            f"- {kcol}: {kmer}-mer frequencies + logistic regression (C by 5-fold CV on train), "
            "measured here on the same splits"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_results(summary, baselines, sources, out / "results.png", label=label, kcol=kcol)


def plot_results(
    summary: dict, baselines: dict, sources: list[str], path: Path, *, label: str, kcol: str | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(summary)
    series = [(label, [summary[d]["mean"] for d in datasets], [summary[d]["std"] for d in datasets])]
    if baselines:
        series.append((kcol, [baselines.get(d, {}).get("value", np.nan) for d in datasets], None))
    for src in sources:
        series.append((src, [published_for(d).get(src, np.nan) for d in datasets], None))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(datasets) + 2), 4))
    x = np.arange(len(datasets))
    for i, (name, vals, err) in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, yerr=err, label=name, capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{d}\n({summary[d]['metric']})" for d in datasets], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test metric")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
