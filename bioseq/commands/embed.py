"""``bioseq embed``: FASTA (or SMILES) -> embeddings on disk. Wiring only; the engine is bioseq/embed.py.

Examples::

    bioseq embed -m hyenadna-tiny-1k genome.fa.gz -o emb.h5 --long chunk
    bioseq embed -m runs/exported/ proteins.faa --pool mean max --per-token -o emb.h5
    bioseq embed -m chem_model/ --smiles mols.csv --smiles-column smiles -o emb.h5
    bioseq embed ... --resume             # continue an interrupted run (same inputs, model, options)
    bioseq embed ... --devices 4          # data parallel over 4 GPUs (Lightning predict)
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
from pathlib import Path

from bioseq.commands.common import HelpFormatter

HELP = "Turn FASTA (or SMILES) into embeddings on disk (HDF5 or npy)."
# The engine's choices, written out so that --help and argument errors need no torch import
# (tests/bioseq/test_first_hour.py checks they equal bioseq.pooling.POOLS / bioseq.embed.LONG_POLICIES).
POOLS = ("mean", "max", "first", "last")
LONG_POLICIES = ("error", "truncate", "chunk", "stream")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bioseq embed", description=HELP + " Rows are written in input order; the output appears "
        "only when complete (a temporary parts directory beside it holds finished work for --resume).",
        epilog="examples:\n"
               "  bioseq embed genome.fa.gz -m hyenadna-tiny-1k -o emb.h5 --long chunk\n"
               "  bioseq embed prots.faa -m exported_dir/ -o emb.h5 --pool mean max --per-token\n"
               "  bioseq embed mols.csv --smiles-column smiles -m chem_dir/ -o emb.h5\n"
               "  (put INPUT files before list options such as --pool / --layers, or end them with --)",
        formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="FASTA files (plain, gzip or BGZF), or with --smiles one SMILES text/.smi/CSV file; "
                        "- reads standard input (a pipe is copied to a temporary file first)")
    p.add_argument("-m", "--model", required=True,
                   help="bioseq / released checkpoint directory, or a preset name (random weights)")
    p.add_argument("-o", "--output", required=True, help="output .h5 file (or directory with --format npy)")
    p.add_argument("--format", choices=("h5", "npy"), default="h5")
    p.add_argument("--pool", nargs="+", default=["mean"], choices=POOLS, metavar="POOL",
                   help=f"pooled outputs, one or more of {', '.join(POOLS)}")
    p.add_argument("--per-token", action="store_true", help="also store per-residue embeddings (ragged)")
    p.add_argument("--layers", nargs="+", type=int, default=[], metavar="K",
                   help="also store these hidden states (0 = embeddings, k = after block k, negative from "
                        "the end) under /layers/<K>/")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage dtype")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per forward pass (default: the model's l_max, else unlimited)")
    p.add_argument("--long", choices=LONG_POLICIES, default="error",
                   help="sequences longer than --max-length: error, truncate, chunk (overlapping windows, "
                        "stitched), stream (exact, recurrent backbones only)")
    p.add_argument("--overlap", type=int, default=None, help="chunk overlap in tokens (default max_length/4)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per batch (memory knob)")
    p.add_argument("--buffer-tokens", type=int, default=1 << 19,
                   help="records are sorted and committed in buffers of this many tokens")
    p.add_argument("--rc-average", action="store_true",
                   help="DNA: average each pooled vector with the reverse complement's")
    p.add_argument("--add-eos", action="store_true", help="append [SEP] (the 'last' pool is then its state)")
    p.add_argument("--add-cls", action="store_true", help="prepend [CLS]")
    p.add_argument("--unknown", choices=("error", "unk"), default=None,
                   help="characters outside the alphabet: error naming the record (default) or [UNK]")
    p.add_argument("--smiles", action="store_true", help="the input is SMILES (one text/.smi/CSV file)")
    p.add_argument("--smiles-column", default=None, help="CSV column holding SMILES (implies --smiles)")
    p.add_argument("--id-column", default=None, help="CSV column holding record ids (default: row number)")
    p.add_argument("--dedupe", action="store_true", help="keep the first of records with the same id")
    p.add_argument("--skip-empty", action="store_true", help="drop records with no sequence")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="compute precision (bf16/fp16: autocast; mainly for GPUs)")
    p.add_argument("--devices", type=int, default=1,
                   help="> 1: data parallel over this many GPUs per node via Lightning predict")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes for the data-parallel run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0, help="seed for a preset's random weights")
    p.add_argument("--model-override", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config fields for a preset, e.g. alphabet=protein l_max=4098 (vocab_size follows "
                        "the alphabet unless given)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no notes (the random-weights note stays in the metadata)")
    return p


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def parse_overrides(items: list[str]) -> dict:
    """``["alphabet=protein", "l_max=4098"]`` -> dict (values parsed as JSON when they parse)."""
    import json

    from bioseq.embed import EmbedError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EmbedError(f"--model-override {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    if "alphabet" in out and "vocab_size" not in out:
        from bioseq.tokenizers import get_tokenizer

        out["vocab_size"] = get_tokenizer(out["alphabet"]).vocab_size
    return out


def load_model(spec: str, seed: int = 0, overrides: dict | None = None):
    """(backbone, tokenizer, model metadata) for a checkpoint directory or a preset name."""
    import dataclasses

    import torch

    from bioseq import models
    from bioseq.embed import EmbedError

    torch.manual_seed(seed)  # presets: deterministic random weights (so --resume can verify them)
    try:
        backbone = models.resolve_backbone(spec, overrides=overrides)
    except TypeError as err:  # an unknown config field
        raise EmbedError(f"--model-override: {err}") from None
    tokenizer = models.load_tokenizer_for(backbone)
    config = backbone.config
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    meta = {"model": str(spec), "arch": getattr(config, "arch", type(backbone).__name__),
            "model_config": config_dict, "alphabet": getattr(config, "alphabet", None)}
    source = getattr(backbone, "_source_dir", None)
    if source is not None:
        from bioseq.checkpoints import weights_file

        wf = weights_file(source)
        meta.update(model=str(Path(spec).resolve()), weights_file=str(wf), weights_sha256=sha256_file(wf))
    else:
        meta.update(weights_file="", weights_sha256="", random_init_seed=seed)
    origin = getattr(backbone, "weights_origin", None)
    meta["random_weights"] = origin == "random" if origin is not None else source is None
    return backbone, tokenizer, meta


def options_from_args(args):
    from bioseq.embed import EmbedOptions

    return EmbedOptions(pools=tuple(dict.fromkeys(args.pool)), per_token=args.per_token,
                        layers=tuple(args.layers), max_length=args.max_length, long=args.long,
                        overlap=args.overlap, batch_tokens=args.batch_tokens,
                        buffer_tokens=args.buffer_tokens,
                        dtype=args.dtype, rc_average=args.rc_average, add_cls=args.add_cls,
                        add_eos=args.add_eos, device=args.device, precision=args.precision)


#: Remedies of FASTA errors, phrased with this command's flags.
HINTS = {"allow_duplicates": "pass --dedupe to keep the first record of each id",
         "skip_empty": "pass --skip-empty to drop empty records"}


def _fasta_records(paths: list[str], names: list[str], dedupe: bool, skip_empty: bool):
    from bioseq.embed import SequenceRecord
    from bioseq.fasta import FastaError, read_fasta

    for path, name in zip(paths, names):
        try:
            for rec in read_fasta(path, allow_duplicates=dedupe, skip_empty=skip_empty, as_bytes=True):
                yield SequenceRecord(rec.id, rec.seq, name, rec.line)
        except FastaError as err:
            shown = None if path == name else ("<stdin>" if name == "-" else name)
            raise err.with_hint(HINTS, path=shown) from None


def records_factory(args, paths: list[str] | None = None):
    """A zero-argument callable giving a fresh record iterator (the engine reads the input twice).
    ``paths``: the files to read in place of ``args.inputs`` (stdin and pipes copied to files)."""
    from bioseq.embed import EmbedError, iter_smiles

    paths = list(paths or args.inputs)
    if args.smiles or args.smiles_column:
        if len(args.inputs) != 1:
            raise EmbedError("--smiles takes exactly one input file")
        return lambda: iter_smiles(paths[0], column=args.smiles_column, id_column=args.id_column)
    return lambda: _fasta_records(paths, list(args.inputs), args.dedupe, args.skip_empty)


def check_output(args) -> Path:
    """One-line errors, before anything is loaded, for an output that cannot be written: over an input, a
    directory where a file is meant (or the reverse), a missing or unwritable directory."""
    import os
    import tempfile

    from bioseq.errors import BioseqError

    out = Path(args.output)
    for name in args.inputs:
        if name != "-" and Path(name).exists() and out.exists() and os.path.samefile(name, out) or \
                name != "-" and Path(name).resolve() == out.resolve():
            raise BioseqError(f"-o {out}: that is an input file; refusing to write the output over it")
    if out.is_dir() and args.format == "h5":
        raise BioseqError(f"-o {out}: is a directory; give a file name (e.g. {out / 'embeddings.h5'}) or "
                          "--format npy to write a directory")
    if out.exists() and not out.is_dir() and args.format == "npy":
        raise BioseqError(f"-o {out}: is a file; --format npy writes a directory")
    if not out.parent.is_dir():
        raise BioseqError(f"-o {out}: the directory {out.parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise BioseqError(f"-o {out}: cannot write in {out.parent} ({err.strerror})") from None
    return out


def _drop_empty_parts(out: Path) -> None:
    """After a failed run: remove the parts directory when it holds no finished work (nothing to resume)."""
    import shutil

    from bioseq.embed import list_parts, parts_dir_for

    parts = parts_dir_for(out)
    if parts.is_dir() and not list_parts(parts):
        shutil.rmtree(parts, ignore_errors=True)


def main(argv: list[str]) -> int:
    from bioseq.commands.common import SpooledInputs, check_input_file

    args = build_parser().parse_args(argv)
    for path in args.inputs:  # cheap checks first: no torch import for a typo
        check_input_file(path)
    out = check_output(args)
    if out.exists() and not args.overwrite:
        if args.resume:
            print(f"bioseq embed: {out} is already complete; nothing to resume", file=sys.stderr)
            return 0
        from bioseq.errors import BioseqError

        raise BioseqError(f"{out} exists; pass --overwrite to replace it")
    with SpooledInputs(args.inputs, suffix=".txt" if args.smiles or args.smiles_column else ".fa") as spool:
        try:
            return _run(args, argv, out, spool)
        except OSError as err:
            from bioseq.errors import BioseqError

            _drop_empty_parts(out)
            where = err.filename or out
            raise BioseqError(f"{where}: cannot write ({err.strerror or err})") from None
        except Exception:
            _drop_empty_parts(out)
            raise


def _run(args, argv: list[str], out: Path, spool) -> int:
    import torch

    from bioseq.commands.common import is_random_preset, random_weights_warning
    from bioseq.embed import EmbedError, embed_to_file

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise EmbedError(f"--device {args.device}: CUDA is not available on this machine")
    records = records_factory(args, spool.paths)
    options = options_from_args(args)
    if is_random_preset(args.model) and not args.quiet:  # -q: only the metadata says random_weights
        random_weights_warning("embed", args.model)
    backbone, tokenizer, meta = load_model(args.model, args.seed, parse_overrides(args.model_override))
    if args.unknown is not None:
        from bioseq.tokenizers import tokenizer_from_config

        tokenizer = tokenizer_from_config({**tokenizer.to_dict(), "unknown": args.unknown})
    meta.update(tokenizer_config=tokenizer.to_dict() if hasattr(tokenizer, "to_dict") else None,
                command_line=shlex.join(["bioseq", "embed", *argv]),
                inputs=[p if p == "-" or spool_path != p else str(Path(p).resolve())
                        for p, spool_path in zip(args.inputs, spool.paths)],
                torch_version=torch.__version__)
    try:
        if args.devices > 1 or args.num_nodes > 1:
            from bioseq.commands.embed_distributed import embed_distributed

            written = embed_distributed(records, out, backbone, tokenizer, options, fmt=args.format,
                                        resume=args.resume, overwrite=args.overwrite, dedupe=args.dedupe,
                                        metadata=meta, devices=args.devices, num_nodes=args.num_nodes,
                                        progress=not args.quiet)
        else:
            written = embed_to_file(records, out, backbone, tokenizer, options, fmt=args.format,
                                    resume=args.resume, overwrite=args.overwrite, dedupe=args.dedupe,
                                    metadata=meta, progress=not args.quiet)
    except KeyboardInterrupt:
        from bioseq.embed import parts_dir_for

        if parts_dir_for(out).exists():
            print(f"bioseq embed: finished work is kept in {parts_dir_for(out)}; rerun the same command with "
                  "--resume to continue", file=sys.stderr)
        raise
    unk = (written or {}).get("unk_tokens") or 0
    if unk:
        print(f"bioseq embed: {unk} character{'s' if unk != 1 else ''} outside the "
              f"{getattr(tokenizer, 'name', 'tokenizer')} alphabet embedded as [UNK]", file=sys.stderr)
    if not args.quiet:
        print(f"bioseq embed: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
