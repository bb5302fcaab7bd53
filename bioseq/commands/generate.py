"""``bioseq generate``: sample sequences from a causal backbone with a recurrent state (Mamba, causal xLSTM).
Wiring only; the engine is bioseq/generate.py.

Examples::

    bioseq generate -m runs/chem_export/ -n 1000 --max-new-tokens 128 --top-p 0.95 -o mols.smi
    bioseq generate -m dna_model/ --prompt ATGACC -n 10 --max-new-tokens 2000 -o samples.fa
    bioseq generate -m dna_model/ --prompt-file prompts.fa -n 5 --max-new-tokens 500 --top-k 3 -o out.fa
    bioseq generate -m runs/chem/version_0/checkpoints/last.ckpt -n 100 --max-new-tokens 128 -o mols.smi

Output: FASTA for DNA and protein models (ids ``sample_<i>``, or ``<prompt id>_sample_<i>`` with
``--prompt-file``), one SMILES per line for SMILES models (an empty line for an empty sample, so line
numbers stay aligned with the samples). The output appears only when complete (written to a temporary
file beside it, then renamed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bioseq.commands.common import HelpFormatter

HELP = "Sample sequences (FASTA or SMILES) from a causal model with a recurrent state (Mamba, xLSTM)."
FASTA_WIDTH = 80


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bioseq generate", description=HELP + " The prompt is read through the model's recurrent "
        "state once, then tokens are drawn one at a time with memory that does not grow with the length.",
        epilog="examples:\n"
               "  bioseq generate -m chem_dir/ -n 1000 --max-new-tokens 128 --top-p 0.95 -o mols.smi\n"
               "  bioseq generate -m dna_dir/ --prompt ATGACC -n 10 --max-new-tokens 2000 -o out.fa\n"
               "  bioseq generate -m dna_dir/ --prompt-file prompts.fa -n 5 --max-new-tokens 500 -o out.fa",
        formatter_class=HelpFormatter)
    p.add_argument("-m", "--model", required=True,
                   help="bioseq / released checkpoint directory, a `bioseq pretrain` checkpoint (last.ckpt), "
                        "or a preset name (random weights)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="prompt text (DNA, protein or SMILES)")
    src.add_argument("--prompt-file", default=None,
                     help="prompts: a FASTA file (DNA/protein) or a SMILES text/.smi/CSV file; -n samples "
                          "each")
    p.add_argument("--smiles-column", default=None, help="CSV column holding the SMILES of --prompt-file")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, required=True, help="tokens generated per sample at most")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most probable tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: the most probable tokens holding this much probability (1 = off)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampler (and of a preset's random weights)")
    p.add_argument("--stop-at-eos", action=argparse.BooleanOptionalAction, default=None,
                   help="let the model end a sample with [SEP] (default: on for SMILES, off for DNA and "
                        "protein, where every sample has --max-new-tokens tokens)")
    p.add_argument("--add-cls", action=argparse.BooleanOptionalAction, default=None,
                   help="start each prompt with [CLS], as the SMILES training examples do (default: on for "
                        "SMILES, off otherwise; with no prompt at all samples always start from [CLS])")
    p.add_argument("--continuation-only", action="store_true",
                   help="write only the generated tokens, not the prompt before them")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer JSON to use instead of the one saved beside the weights")
    p.add_argument("-o", "--output", required=True, help="output file (FASTA or .smi); '-' for stdout")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--batch-size", type=int, default=256, help="samples decoded together")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def generative_families() -> str:
    """The registered families whose backbones can carry a recurrent state, e.g. ``"mamba, xlstm"``."""
    from bioseq import models

    stateful = [f.arch for f in models.FAMILIES if getattr(f.module, "supports_state", False) is not False]
    return ", ".join(stateful)


def load_pretrain_checkpoint(path: Path):
    """(backbone, tokenizer) of a ``bioseq pretrain`` Lightning checkpoint (``last.ckpt``): the backbone
    config and tokenizer are plain data in its ``hyper_parameters``, the weights under ``backbone.`` in its
    ``state_dict``. Read with ``torch.load(weights_only=True)``."""
    import pickle

    import torch

    from bioseq import models
    from bioseq.generate import GenerateError
    from bioseq.tokenizers import tokenizer_from_config

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise GenerateError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__})") from None
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if not isinstance(hp, dict) or not hp.get("backbone_config") or not hp.get("tokenizer"):
        raise GenerateError(f"{path}: not a bioseq pretrain checkpoint (no backbone_config and tokenizer in "
                            "its hyper_parameters); give a model directory or a preset instead")
    backbone = models.build_backbone(config=hp["backbone_config"])
    state = {k.removeprefix("backbone."): v for k, v in obj.get("state_dict", {}).items()
             if k.startswith("backbone.")}
    backbone.load_converted_state_dict(state, strict=True, source=path)
    backbone.weights_origin = str(path)
    return backbone, tokenizer_from_config(hp["tokenizer"])


def load_generator_model(spec: str, seed: int, tokenizer_path: str | None):
    """(backbone, tokenizer) for a checkpoint directory, a ``bioseq pretrain`` ``.ckpt`` file or a preset;
    refuses models that cannot generate and SMILES models without their saved vocabulary."""
    import torch

    from bioseq import models
    from bioseq.generate import GenerateError, check_generative
    from bioseq.tokenizers import load_tokenizer

    torch.manual_seed(seed)   # presets: deterministic random weights
    from_ckpt = str(spec).endswith(".ckpt") and Path(spec).is_file()
    if from_ckpt:
        backbone, tokenizer = load_pretrain_checkpoint(Path(spec))
    else:
        backbone = models.resolve_backbone(spec)
    check_generative(backbone, generative_families())
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
    elif not from_ckpt:
        source = getattr(backbone, "_source_dir", None)
        saved = source is not None and (Path(source) / "tokenizer.json").is_file()
        if backbone.alphabet == "smiles" and not saved:
            where = f"{source}/tokenizer.json" if source is not None else "tokenizer.json (a preset has none)"
            raise GenerateError(f"{spec}: a SMILES model needs its vocabulary: {where} is missing "
                                "(export the model with its tokenizer, or pass --tokenizer FILE)")
        tokenizer = models.load_tokenizer_for(backbone)
    if tokenizer.alphabet != backbone.alphabet:
        raise GenerateError(f"{spec}: the tokenizer is for {tokenizer.alphabet!r}, the model for "
                            f"{backbone.alphabet!r}")
    return backbone, tokenizer


def read_prompts(args, tokenizer, add_cls: bool) -> list[tuple[str | None, object]]:
    """``[(prompt id or None, token ids), ...]``: one empty prompt (just [CLS]) when none is given."""
    import numpy as np

    from bioseq.generate import GenerateError

    def encode(text, path=None, record=None):
        ids = tokenizer.encode(text, add_cls=add_cls, path=path, record=record)
        if len(ids) == 0:
            ids = np.array([tokenizer.cls_id], dtype=np.int64)
        return ids

    if args.prompt is not None:
        return [(None, encode(args.prompt, record="--prompt"))]
    if args.prompt_file is None:
        return [(None, np.array([tokenizer.cls_id], dtype=np.int64))]
    path = Path(args.prompt_file)
    if not path.is_file():
        raise GenerateError(f"{path}: no such prompt file")
    if tokenizer.name == "smiles":
        from bioseq.smiles_file import iter_smiles

        entries = [(e.id, e.smiles, e.line) for e in iter_smiles(path, column=args.smiles_column)]
        prompts = [(rid, encode(smi, path, rid)) for rid, smi, _ in entries]
    else:
        from bioseq.fasta import read_fasta

        prompts = [(rec.id, encode(rec.seq, path, rec.id)) for rec in read_fasta(path, as_bytes=True)]
    if not prompts:
        raise GenerateError(f"{path}: no prompts found")
    return prompts


def format_records(samples, prompts, tokenizer, continuation_only: bool, use_prompt_ids: bool):
    """Text lines of the output, one sample at a time (FASTA records or SMILES lines)."""
    import numpy as np

    smiles = tokenizer.name == "smiles"
    for s in samples:
        ids = s.ids if continuation_only else np.concatenate([prompts[s.prompt_index][1], s.ids])
        text = tokenizer.decode(ids)
        if smiles:
            yield text + "\n"
            continue
        pid = prompts[s.prompt_index][0]
        name = f"{pid}_sample_{s.sample_index + 1}" if use_prompt_ids else f"sample_{s.sample_index + 1}"
        body = "".join(text[i:i + FASTA_WIDTH] + "\n" for i in range(0, len(text), FASTA_WIDTH))
        yield f">{name}\n{body}"


def write_atomic(out: str, lines) -> None:
    """Write ``lines`` to ``out`` through a temporary file beside it, renamed when complete; on any error
    (or Ctrl-C) the temporary file is removed and ``out`` is untouched."""
    if out == "-":
        for line in lines:
            sys.stdout.write(line)
        sys.stdout.flush()
        return
    target = Path(out)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            for line in lines:
                fh.write(line)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from bioseq.generate import GenerateError, SamplingOptions, generate

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerateError(f"--device {args.device}: CUDA is not available on this machine")
    if args.num_samples < 1:
        raise GenerateError(f"-n/--num-samples must be >= 1, got {args.num_samples}")
    out = args.output
    if out != "-":
        if Path(out).is_dir():
            raise GenerateError(f"{out} is a directory; -o takes a file name")
        if Path(out).exists() and not args.overwrite:
            raise GenerateError(f"{out} exists; pass --overwrite to replace it")
        if not Path(out).resolve().parent.is_dir():
            raise GenerateError(f"{out}: the output directory does not exist")
    backbone, tokenizer = load_generator_model(args.model, args.seed, args.tokenizer)
    smiles = tokenizer.name == "smiles"
    stop = smiles if args.stop_at_eos is None else args.stop_at_eos
    add_cls = smiles if args.add_cls is None else args.add_cls
    options = SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, stop_at_eos=stop,
                              batch_size=args.batch_size)
    if backbone.weights_origin == "random":
        print(f"bioseq: warning: {args.model} has RANDOM weights (a preset, not a trained checkpoint): the "
              "samples are noise", file=sys.stderr)
    prompts = read_prompts(args, tokenizer, add_cls)
    limit = backbone.max_length
    longest = max(len(ids) for _, ids in prompts) + args.max_new_tokens
    if limit and longest > limit:
        print(f"bioseq: warning: prompt + --max-new-tokens reaches {longest} tokens, beyond the model's "
              f"{limit}-token context", file=sys.stderr)
    backbone.to(args.device)

    from tqdm.auto import tqdm

    total = len(prompts) * args.num_samples * args.max_new_tokens
    bar = tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True, disable=args.quiet,
               desc="generate", file=sys.stderr, smoothing=0.1)
    counts = {"samples": 0, "unfinished": 0}

    def samples():
        for s in generate(backbone, tokenizer, [ids for _, ids in prompts], args.num_samples, options,
                          seed=args.seed, device=args.device, progress=bar.update):
            bar.update(args.max_new_tokens - len(s.ids) - int(s.stopped))   # the draws it did not need
            counts["samples"] += 1
            counts["unfinished"] += int(stop and not s.stopped)
            yield s

    try:
        write_atomic(out, format_records(samples(), prompts, tokenizer, args.continuation_only,
                                         args.prompt_file is not None))
    finally:
        bar.close()
    if counts["unfinished"]:
        print(f"bioseq generate: {counts['unfinished']} of {counts['samples']} samples reached "
              f"--max-new-tokens before [SEP]", file=sys.stderr)
    if not args.quiet and out != "-":
        print(f"bioseq generate: wrote {counts['samples']} samples to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
