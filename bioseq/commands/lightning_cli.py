"""The one LightningCLI wrapper behind ``bioseq pretrain``, ``bioseq finetune`` and the suite runner.

What it adds to ``LightningCLI``:

* **Shipped configs by name**: ``--config hyenadna-tiny-hg38`` or ``--config genomic_benchmarks/
  human_nontata_promoters`` finds the YAML inside the package (:mod:`bioseq.config_files`); a path works
  as before. ``bioseq pretrain --list-configs`` lists them.
* **A predictable run directory**: every run writes ``<root>/version_<N>/`` holding ``config.yaml``,
  ``metrics.csv`` and ``checkpoints/`` (``last.ckpt`` plus the monitored best), where ``<root>`` is
  ``trainer.default_root_dir`` (default ``runs/<config name>``). ``--ckpt_path last`` resumes from the
  newest ``<root>/version_*/checkpoints/last.ckpt``. ``fast_dev_run`` writes no checkpoint at all.
* **One-line errors**: a broken YAML, an unknown or missing key, a bad value: one line naming the file,
  key or line (exit 2), instead of the usage dump.
* **Quiet by default**: Lightning's info lines, tips and warnings are hidden unless ``bioseq -v`` (or
  ``BIOSEQ_VERBOSE=1``); our own lines say where the run and its checkpoints are.
* **finetune**: ``model.num_classes`` and ``model.problem_type`` are linked from the DataModule (the
  class count is read from the data); after ``fit`` the best validation checkpoint is tested and the
  weights tested are named; a preset backbone is flagged as random weights.

``bioseq pretrain --help`` prints a short help without importing Lightning; ``bioseq pretrain fit
--help`` prints every option (slow: it builds the whole parser).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from bioseq.commands.common import is_random_preset
from bioseq.errors import BioseqError

SUBCOMMANDS = {"pretrain": ("fit", "validate", "test"), "finetune": ("fit", "validate", "test", "predict")}
DESCRIPTIONS = {
    "pretrain": "Pretrain a backbone with a causal or masked LM objective (LightningCLI).",
    "finetune": "Finetune a backbone on a labelled sequence task (LightningCLI).",
}
EXAMPLES = {
    "pretrain": [
        "bioseq pretrain fit --config hyenadna-tiny-hg38 --data.fasta hg38.fa",
        "bioseq pretrain fit --config hyenadna-tiny-ecoli --trainer.max_steps 20",
        "bioseq pretrain fit --config hyenadna-tiny-ecoli --ckpt_path last      # resume the newest run",
        "bioseq pretrain fit --config hyenadna-tiny-hg38 --print_config         # the full config",
    ],
    "finetune": [
        "bioseq finetune fit --config human_nontata_promoters --data.train_file train.tsv "
        "--data.test_file test.tsv",
        "bioseq finetune fit --config genomic_benchmarks/human_nontata_promoters --data.data_dir GB_ROOT "
        "--model.backbone EXPORTED_DIR",
        "bioseq finetune fit --config human_nontata_promoters ... --ckpt_path last   # resume",
    ],
}
_THIRD_PARTY = re.compile(r"[/\\](lightning|lightning_fabric|pytorch_lightning|torchmetrics|jsonargparse|"
                          r"lightning_utilities|torch)[/\\]")


def verbose() -> bool:
    return os.environ.get("BIOSEQ_VERBOSE", "") not in ("", "0")


def say(prog: str, message: str) -> None:
    """One ``<prog>: message`` line on stderr (rank zero only), e.g. ``bioseq pretrain: ...``."""
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(f"{prog}: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# help without Lightning
# --------------------------------------------------------------------------------------------------
def list_configs(kind: str) -> str:
    from bioseq.config_files import shipped_configs

    names = [n.split("/", 1)[1] for n in shipped_configs(kind)]
    return "\n".join(f"  {n}" for n in names)


def quick_help(kind: str) -> str:
    subs = ",".join(SUBCOMMANDS[kind])
    lines = [
        f"usage: bioseq [-v] {kind} {{{subs}}} [--config NAME_OR_PATH] [--KEY VALUE ...] "
        "[--ckpt_path PATH|last]",
        "",
        DESCRIPTIONS[kind],
        "",
        "subcommands:",
        *(f"  {s}" for s in SUBCOMMANDS[kind]),
        "",
        "options:",
        "  --config NAME_OR_PATH  a YAML file or the name of a shipped config (below); repeatable",
        "  --KEY VALUE            any config key, e.g. --trainer.max_steps 20 --data.batch_size 8",
        "  --ckpt_path PATH|last  resume (fit) or evaluate a checkpoint; 'last' = the newest",
        "                         <root>/version_*/checkpoints/last.ckpt",
        "  --print_config         print the full config and exit",
        "  --list-configs         list the shipped configs and exit",
        "  -v (before the command: bioseq -v ...)  show Lightning's own messages",
        "",
        "Each run writes <root>/version_<N>/ (config.yaml, metrics.csv, checkpoints/last.ckpt and the best",
        "checkpoint); <root> is --trainer.default_root_dir, by default runs/<config name>.",
        "",
        "shipped configs (--config NAME):",
        list_configs(kind),
        "",
        "examples:",
        *(f"  {e}" for e in EXAMPLES[kind]),
        "",
        f"Every option of a subcommand: bioseq {kind} fit --help (builds the whole parser: a few seconds).",
    ]
    return "\n".join(lines)


def handle_quick(kind: str, argv: list[str]) -> str | None:
    """The text to print for ``--help`` / ``--list-configs`` / no arguments, else None."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        return quick_help(kind)
    if argv[0] == "--list-configs":
        return list_configs(kind)
    return None


# --------------------------------------------------------------------------------------------------
# argv preprocessing (before Lightning is imported)
# --------------------------------------------------------------------------------------------------
def _config_values(argv: list[str]) -> list[tuple[int, str]]:
    """(index, value) of every ``--config X`` / ``--config=X`` / ``-c X``."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out.append((i + 1, argv[i + 1]))
        elif arg.startswith("--config="):
            out.append((i, arg.split("=", 1)[1]))
    return out


def resolve_configs(kind: str, argv: list[str]) -> tuple[list[str], list[Path]]:
    """Replace shipped-config names by their paths; check each YAML parses (one line naming the line)."""
    import yaml

    from bioseq.config_files import find_config

    argv = list(argv)
    paths = []
    for i, value in _config_values(argv):
        path = find_config(value, kind)
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise BioseqError(f"{where}: not valid YAML ({problem})") from None
        except OSError as err:
            raise BioseqError(f"{path}: cannot read ({err.strerror})") from None
        if content is not None and not isinstance(content, dict):
            raise BioseqError(f"{path}:1: a config is a mapping of sections (model:, data:, trainer:), "
                              f"not a {type(content).__name__}")
        argv[i] = str(path) if argv[i] == value else f"--config={path}"
        paths.append(path)
    return argv, paths


def _key_line(paths: list[Path], key: str, value: str | None = None) -> tuple[Path, int] | None:
    """The file and 1-based line where the dotted ``key`` (e.g. ``model.foo``) is written, if it is: the
    last file that sets it, or with ``value`` the last file that sets it to that value."""
    import yaml

    parts = [p for p in key.split(".") if p != "init_args"]
    hits = []
    for path in paths:
        try:
            node = yaml.compose(path.read_text())
        except yaml.YAMLError:
            continue
        stack = [(node, parts)]
        while stack:
            cur, rest = stack.pop()
            if not isinstance(cur, yaml.MappingNode) or not rest:
                continue
            for k, v in cur.value:
                if k.value == "init_args":
                    stack.append((v, rest))
                elif k.value == rest[0]:
                    if len(rest) == 1:
                        hits.append((path, k.start_mark.line + 1, getattr(v, "value", None)))
                    else:
                        stack.append((v, rest[1:]))
    if value is not None and any(str(h[2]) == str(value) for h in hits):
        hits = [h for h in hits if str(h[2]) == str(value)]
    return hits[-1][:2] if hits else None


def _expected(problem: str) -> str:
    """``Expected a <class 'int'>. Got value: four`` -> ``expected int, got 'four'``."""
    m = re.search(r"Expected a <class '([\w.]+)'>\.? ?Got value: (.*)", problem)
    if m:
        return f"expected {m.group(1).rsplit('.', 1)[-1]}, got {m.group(2).strip()!r}"
    return re.sub(r"\s+", " ", problem).strip()[:200]


def _where(paths: list[Path], key: str, argv: list[str] = (), value: str | None = None) -> str:
    """``FILE:LINE: `` where ``key`` is set, or ``--key: `` when the command line sets it."""
    if any(a == f"--{key}" or a.startswith(f"--{key}=") for a in argv):
        return f"--{key}: "
    found = _key_line(paths, key, value)
    return f"{found[0]}:{found[1]}: " if found else ""


def config_error_line(kind: str, message: str, paths: list[Path], argv: list[str] = ()) -> str:
    """One line from a jsonargparse error message: the file and line (when the key is in a config file),
    the dotted key, and what was expected."""
    text = str(message)
    prefix, owner = "", ""
    outer = re.match(r'Parser key "([^"]+)":', text)
    nested = re.search(r"Problem with given class_path '([^']+)':\s*\n(.*?)(?=\n\s*- |\Z)", text, re.S)
    if outer and nested:  # an error inside a class_path's init_args (e.g. the data module)
        prefix, owner = outer.group(1) + ".", nested.group(1).rsplit(".", 1)[-1]
        text = nested.group(2)
    flat = " ".join(line.strip() for line in text.splitlines() if line.strip())
    m = (re.search(r"the following arguments are required: (.+?)(?: - |$)", flat)
         or re.search(r'Key "([^"]+)" is required but not included', flat))
    if m:
        names = [prefix + n.strip() for n in m.group(1).split(",")]
        given = f" ({', '.join(str(p) for p in paths)} do{'es' if len(paths) == 1 else ''} not set it)" \
            if paths else ""
        return f"{' and '.join('--' + n for n in names)} {'is' if len(names) == 1 else 'are'} required{given}"
    m = re.search(r"Linked \"([^\"]+)\" must be given via", flat)
    if m:
        return (f"{_where(paths, m.group(1), argv)}{m.group(1)} is taken from the data (the DataModule's "
                "labels); remove it (data.regression=true makes a regression task)")
    m = re.search(r"[Uu]nrecognized arguments: (\S+)", flat)
    if m:
        return f"unknown option {m.group(1)} (bioseq {kind} fit --help lists them)"
    m = re.search(r"[Oo]ption '([^']+)' is not accepted|does not accept option '([^']+)'|"
                  r'Key "([^"]+)" is not expected|No action for key "([^"]+)"', flat)
    if m:
        key = prefix + next(g for g in m.groups() if g)
        where = _where(paths, key, argv)
        of = f" ({owner} has no such argument)" if owner else ""
        return f"{where}unknown key '{key}'{of}"
    m = re.search(r"module '([\w.]+)' has no attribute '(\w+)'|No module named '([\w.]+)'", flat)
    if m:  # a class_path that cannot be imported: name the config line that gives it
        missing = m.group(2) or m.group(3).rsplit(".", 1)[-1]
        for path in paths:
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "class_path" in line and missing in line:
                    return f"{path}:{n}: cannot import {line.split(':', 1)[1].strip()} ({m.group(0)})"
        return f"cannot import a class_path ({m.group(0)})"
    m = re.search(r'Parser key "([^"]+)":\s*(.+)', flat)
    if m:
        key = prefix + m.group(1)
        problem = re.split(r"\s*Given value type: ", m.group(2))[0]
        got = re.search(r"Got value: (.*)", problem)
        where = _where(paths, key, argv, got.group(1).strip() if got else None)
        return f"{where}bad value for '{key}': {_expected(problem)}"
    return re.sub(r"\s+", " ", flat)[:300]


# --------------------------------------------------------------------------------------------------
# quiet mode
# --------------------------------------------------------------------------------------------------
def _quiet_lightning() -> None:
    import logging

    level = logging.INFO if verbose() else logging.WARNING
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                 "lightning_fabric"):
        logging.getLogger(name).setLevel(level)


def _filtered_showwarning(original):
    def show(message, category, filename, lineno, file=None, line=None):
        if not verbose() and _THIRD_PARTY.search(str(filename)):
            return
        original(message, category, filename, lineno, file, line)

    return show


# --------------------------------------------------------------------------------------------------
# the CLI class
# --------------------------------------------------------------------------------------------------
def _next_version(root: Path) -> int:
    names = [re.fullmatch(r"version_(\d+)", p.name) for p in root.glob("version_*")]
    versions = [int(m.group(1)) for m in names if m]
    return max(versions, default=-1) + 1


def newest_last_checkpoint(root: Path) -> Path | None:
    found = [p for p in root.glob("version_*/checkpoints/last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def check_checkpoint(path: Path) -> None:
    """One line (BioseqError) for a ``--ckpt_path`` file that is not a readable, plain-data Lightning
    checkpoint: truncated, not a checkpoint, or a pickle naming objects that unpickling would call (it is
    read with ``weights_only=True`` and memory-mapped, so the tensors are not loaded here)."""
    import pickle
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        raise BioseqError(f"{path}: not a PyTorch checkpoint archive (truncated, or another kind of file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it names {found.group(1)}, which unpickling would call" if found else "not plain data"
        raise BioseqError(f"{path}: refused: {what} (only plain-data checkpoints are loaded)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BioseqError(f"{path}: cannot read checkpoint ({first})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise BioseqError(f"{path}: not a Lightning checkpoint (no state_dict)")


def _num_classes_of(dm) -> int:
    """The class count of the data (outputs for regression): reads the splits the DataModule has (after
    ``prepare_data``, which downloads a dataset when asked to)."""
    from urllib.error import URLError

    try:
        dm.prepare_data()
    except (URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", None) or err
        raise BioseqError(f"--data.download: cannot download the dataset ({reason}); without network, fetch "
                          "it elsewhere and point --data.data_dir at it") from None
    last = None
    for stage in ("fit", "test", "predict"):
        try:
            dm.setup(stage)
        except BioseqError as err:
            last = err
            continue
        if dm.data:
            return int(dm.num_classes)
    if last is not None:
        raise last
    raise BioseqError("no data to take the class count from: set --data.train_file or --data.data_dir")


def _cli_class(kind: str, prog: str, config_paths: list[Path]):
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger

    subcommands = SUBCOMMANDS[kind]
    default_root = f"runs/{config_paths[-1].stem}" if config_paths else f"runs/{kind}"

    class BioseqCLI(LightningCLI):
        run_dir: Path | None = None

        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            full = LightningCLI.subcommands()
            return {name: full[name] for name in subcommands}

        def add_arguments_to_parser(self, parser) -> None:
            if kind == "finetune":
                parser.add_argument(
                    "--test_after_fit", type=bool, default=True,
                    help="after fit, evaluate the best validation checkpoint on the test split")
                parser.link_arguments("data", "model.num_classes", compute_fn=_num_classes_of,
                                      apply_on="instantiate")
                parser.link_arguments("data.regression", "model.problem_type",
                                      compute_fn=lambda r: "regression" if r else "classification")

        def parse_arguments(self, parser, args) -> None:
            from jsonargparse import ArgumentError

            try:
                super().parse_arguments(parser, args)
            except ArgumentError as err:
                raise BioseqError(config_error_line(kind, str(err), config_paths, list(args))) from None
            sub = self.config.get("subcommand")
            if not sub:
                return
            cfg = self.config[sub]
            if not cfg.trainer.get("default_root_dir"):
                cfg.trainer.default_root_dir = default_root
            root = Path(cfg.trainer.default_root_dir)
            ckpt = cfg.get("ckpt_path")
            if ckpt == "last":
                found = newest_last_checkpoint(root)
                if found is None:
                    raise BioseqError(f"--ckpt_path last: no {root}/version_*/checkpoints/last.ckpt yet "
                                      "(runs save there; give a checkpoint path instead)")
                cfg.ckpt_path = str(found)
                say(prog, f"resuming from {found}")
            elif ckpt and ckpt not in ("best", "hpc", "registry") and not Path(ckpt).is_file():
                raise BioseqError(f"--ckpt_path {ckpt}: no such checkpoint file")
            if cfg.get("ckpt_path") and cfg.ckpt_path not in ("best", "hpc", "registry"):
                check_checkpoint(Path(cfg.ckpt_path))
            if kind == "finetune":
                m = cfg.model
                spec = m.get("backbone")
                scratch = is_random_preset(spec) or (spec is None and m.get("preset"))
                if scratch and not m.get("backbone_config"):
                    name = spec or m.get("preset")
                    flag = "--model.backbone" if spec else "--model.preset"
                    say(prog, f"warning: {flag} {name} is a preset: the backbone starts from "
                              "random weights (give a checkpoint directory to finetune pretrained weights)")
            version = os.environ.get("BIOSEQ_RUN_VERSION")
            if version is None:  # DDP children re-run this command: they reuse rank zero's directory
                version = str(_next_version(root))
                os.environ["BIOSEQ_RUN_VERSION"] = version
            self.run_dir = root / f"version_{version}"

        def _instantiate_trainer(self, config, callbacks):
            logger = config.get("logger")
            if (logger is True or logger is None) and not config.get("fast_dev_run"):
                config["logger"] = CSVLogger(save_dir=str(self.run_dir.parent), name="",
                                             version=self.run_dir.name)
            from bioseq.commands.training_guards import NonFiniteLossGuard, SaveOnSigterm

            callbacks = [*callbacks, NonFiniteLossGuard(), SaveOnSigterm(kind)]
            trainer = super()._instantiate_trainer(config, callbacks)
            for cb in trainer.checkpoint_callbacks:
                if trainer.fast_dev_run:
                    cb.save_last = False  # Lightning's on_train_end would still write last.ckpt
                    continue
                if cb.dirpath is None:
                    cb.dirpath = str(self.run_dir / "checkpoints")
                if cb.save_last is None:
                    cb.save_last = True
            return trainer

        def _run_subcommand(self, subcommand: str) -> None:
            try:
                super()._run_subcommand(subcommand)
            except RuntimeError as err:  # Lightning restoring a checkpoint made for another model
                text = str(err)
                if "Error(s) in loading state_dict" not in text:
                    raise
                ckpt = self.config_init[subcommand].get("ckpt_path")
                detail = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip()), "")
                detail = re.sub(r"\s+", " ", detail)[:240]
                raise BioseqError(f"{ckpt}: the checkpoint does not match the model ({detail})") from None

        def before_fit(self) -> None:
            if not self.trainer.fast_dev_run:
                say(prog, f"run directory {self.run_dir} (checkpoints in {self.run_dir / 'checkpoints'}; "
                          f"resume with --ckpt_path last)")

        def after_fit(self) -> None:
            trainer = self.trainer
            ckpt = trainer.checkpoint_callback
            if not trainer.fast_dev_run and ckpt is not None and ckpt.last_model_path:
                say(prog, f"saved {ckpt.last_model_path} (step {trainer.global_step})")
            if kind != "finetune" or not self.config[self.subcommand].get("test_after_fit", True):
                return
            dm = self.datamodule
            try:
                dm.setup("test")
            except BioseqError:
                return
            if "test" not in getattr(dm, "datasets", {}):
                return
            best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
            if best and not trainer.fast_dev_run:
                score = ckpt.best_model_score
                value = f" {ckpt.monitor} {float(score):.4f}" if score is not None else ""
                say(prog, f"testing the best validation checkpoint ({best}{',' if value else ''}{value})")
                trainer.test(self.model, datamodule=dm, ckpt_path=best)
            else:
                why = "fast_dev_run: " if trainer.fast_dev_run else ""
                say(prog, f"testing the weights at the end of training ({why}step {trainer.global_step})")
                trainer.test(self.model, datamodule=dm, ckpt_path=None)

    return BioseqCLI


def model_and_data_classes(kind: str):
    if kind == "pretrain":
        import lightning as L

        from bioseq.models.lm import LanguageModel

        return LanguageModel, L.LightningDataModule, True
    from bioseq.datamodules.benchmarks import SequenceClassificationDataModule
    from bioseq.finetune.classifier import SequenceClassifier

    return SequenceClassifier, SequenceClassificationDataModule, False


def run_cli(kind: str, argv: list[str], *, run: bool = True, prog: str | None = None):
    """Parse ``argv`` (``["fit", "--config", ...]``), build model, data and trainer, run the subcommand, and
    return the ``LightningCLI`` (``.trainer``, ``.model``, ``.datamodule``; ``.run_dir``)."""
    prog = prog or f"bioseq {kind}"
    argv = list(argv)
    while argv and argv[0] in ("-v", "--verbose"):
        os.environ["BIOSEQ_VERBOSE"] = "1"
        argv = argv[1:]
    argv, config_paths = resolve_configs(kind, argv)
    if os.environ.get("LOCAL_RANK") is None:  # not a DDP child: this run picks its own version
        os.environ.pop("BIOSEQ_RUN_VERSION", None)
    showwarning = warnings.showwarning
    warnings.showwarning = _filtered_showwarning(showwarning)
    try:
        model_class, data_class, subclass_data = model_and_data_classes(kind)
        _quiet_lightning()
        cls = _cli_class(kind, prog, config_paths)
        description = DESCRIPTIONS[kind]
        with warnings.catch_warnings():
            # LightningCLI warns when it is given args while sys.argv holds the outer command line; keeping
            # sys.argv as it is lets DDP relaunch the real command in its worker processes.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            try:
                return cls(
                    model_class,
                    data_class,
                    subclass_mode_data=subclass_data,
                    args=argv,
                    run=run,
                    save_config_kwargs={"overwrite": True},
                    parser_kwargs={"prog": prog, "description": description, "exit_on_error": False},
                    seed_everything_default=2222 if kind == "pretrain" else True,
                )
            except ValueError as err:  # jsonargparse wraps errors raised while linking arguments
                if isinstance(err.__cause__, BioseqError):
                    raise err.__cause__ from None
                raise
    finally:
        warnings.showwarning = showwarning


def run_finetune_cli(argv: list[str], prog: str = "bioseq finetune"):
    """``bioseq finetune`` on ``argv`` (the suite runner calls this once per dataset and seed)."""
    return run_cli("finetune", argv, prog=prog)


def main(kind: str, argv: list[str]) -> int:
    """Entry point of ``bioseq pretrain`` / ``bioseq finetune``."""
    text = handle_quick(kind, argv)
    if text is not None:
        print(text)
        return 0
    try:
        run_cli(kind, argv)
    except SystemExit as stop:  # Lightning ends a run stopped by SIGTERM with its SIGTERMException
        if type(stop).__name__ != "SIGTERMException":
            raise
        return 143  # 128 + SIGTERM, as a shell reports a terminated process
    return 0
