"""The ``bioseq`` console script.

Each subcommand lives in ``bioseq/commands/<name>.py`` as ``main(argv) -> int`` with a one-line
``HELP``. This module only dispatches, so ``bioseq --help`` stays fast (nothing heavy is imported
until a subcommand runs). Errors derived from :class:`bioseq.errors.BioseqError` print as one line
on stderr with exit status 2; ``BIOSEQ_DEBUG=1`` re-raises them with the traceback. Before a subcommand
runs, :func:`bioseq.host_memory.keep_freed_memory` makes glibc reuse freed large blocks (off with
``BIOSEQ_KEEP_FREED_MEMORY=0``).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import bioseq
from bioseq.errors import BioseqError
from bioseq.host_memory import keep_freed_memory

# name -> (module, one-line description). Descriptions are here so --help imports nothing heavy.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("bioseq.commands.inspect", "Summarise FASTA files: records, lengths, alphabet, N, "
                                           "lowercase and IUPAC content."),
    "pretrain": ("bioseq.commands.pretrain", "Pretrain a backbone with a causal or masked LM "
                                             "objective (LightningCLI: fit/validate/test)."),
    "finetune": ("bioseq.commands.finetune", "Finetune a backbone on a labelled sequence task "
                                             "(LightningCLI: fit/validate/test/predict)."),
    "embed": ("bioseq.commands.embed", "Turn FASTA (or SMILES) into embeddings on disk (HDF5 or npy)."),
    "generate": ("bioseq.commands.generate", "Sample sequences (FASTA or SMILES) from a causal model with a "
                                             "recurrent state (Mamba, xLSTM)."),
    "benchmark": ("bioseq.commands.benchmark", "Run a benchmark suite (datasets x seeds) and write the "
                                               "results table beside published numbers."),
    "probe": ("bioseq.commands.probe", "Linear probe (logistic regression) on frozen embeddings or "
                                       "k-mer counts."),
    "soft-prompt": ("bioseq.commands.soft_prompt", "Soft-prompt tuning of a frozen backbone (accuracy "
                                                   "against the number of prompt tokens K)."),
    "icl": ("bioseq.commands.icl", "In-context evaluation: k-shot classification, protein homolog "
                                   "context, SMILES context."),
    "demo": ("bioseq.commands.demo", "Pretrain a tiny HyenaDNA on the bundled synthetic genome (CPU, "
                                     "minutes)."),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: bioseq [--version] [--help] [-v] <command> [args]\n",
        "bioseq: pretrain, finetune and embed long-range biological sequence models.\n",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines.append("\n-v, --verbose  also show the messages of the libraries underneath (Lightning's info"
                 "\n               lines, tips and warnings)")
    lines.append("\nRun `bioseq <command> --help` for a command's options.")
    return "\n".join(lines)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: ``bioseq: warning: <message>``, without the source line."""
    return f"bioseq: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    while argv and argv[0] in ("-v", "--verbose"):
        os.environ["BIOSEQ_VERBOSE"] = "1"
        argv = argv[1:]
    if not argv:
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"bioseq {bioseq.__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bioseq: unknown command '{name}' (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    keep_freed_memory()  # reuse freed activations instead of re-mapping them each step (glibc)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except BioseqError as err:
        if os.environ.get("BIOSEQ_DEBUG"):
            raise
        print(f"bioseq {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bioseq {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bioseq ... | head`: the reader went away; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
