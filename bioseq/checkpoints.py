"""Checkpoint files: safetensors save/load, safe reading of pickled PyTorch/Lightning files, and
converters from the official checkpoint layouts to bioseq parameter names.

Pickles are never loaded with code execution. ``torch.load(weights_only=True)`` is tried first;
a Lightning ``.ckpt`` whose ``hyper_parameters`` hold foreign objects (omegaconf containers,
user classes) is refused by it, so such files are read by :func:`load_torch_restricted`, an
unpickler for PyTorch's zip format that rebuilds tensors from the archive's raw storage records and
turns every other global the pickle names into an inert placeholder (nothing foreign is imported
or called).

Layouts understood by :func:`detect_layout` (a directory with ``config.json``):

- ``bioseq``: our own config (has ``"arch"``) + ``model.safetensors``.
- ``official``: the HyenaDNA repo's model config + a Lightning ``weights.ckpt``; parameter keys are
  ``model.`` + the standalone names, or ``model.backbone.layers.i.mixer.layer.*`` /
  ``.mlp.layer.*`` when the model was trained with activation-checkpointing wrappers.
- ``hf``: the ``-hf`` port: its HyenaConfig json + ``pytorch_model.bin`` or ``model.safetensors``;
  keys under ``hyena.``, plus an untied ``lm_head.weight``.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import json
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from bioseq.errors import BioseqError

__all__ = [
    "CheckpointError", "save_safetensors", "load_state_dict_file", "load_torch_restricted", "Foreign",
    "convert_hyena_official", "detect_layout", "weights_file", "resolve_pretrained",
]


class CheckpointError(BioseqError):
    """A checkpoint file or directory that cannot be read or does not match the model."""


# --------------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------------


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` (safetensors). Tensors sharing storage are written as separate copies."""
    from safetensors.torch import save_file

    seen: set[tuple] = set()
    out = {}
    for name, t in state_dict.items():
        t = t.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        t = t.clone() if key in seen or not t.is_contiguous() else t
        seen.add(key)
        out[name] = t.contiguous()
    save_file(out, str(path), metadata=metadata)


# --------------------------------------------------------------------------------------------------
# restricted unpickler for torch zip archives
# --------------------------------------------------------------------------------------------------


class Foreign:
    """Inert stand-in for an object of a class that is not allowed to be imported.

    Records the pickled reference (``_module``, ``_name``) and whatever the pickle passed
    (constructor args, state, items), so that metadata stays inspectable; never runs foreign code.
    """

    _module = "?"
    _name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args, obj._kwargs, obj._state, obj._items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state

    def __setitem__(self, key, value):
        self._items.append((key, value))

    def append(self, value):
        self._items.append(value)

    def extend(self, values):
        self._items.extend(values)

    def __iter__(self):
        return iter(self._items)

    def __repr__(self):
        return f"<Foreign {self._module}.{self._name}>"


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage:
    """Raw bytes of one storage record and the dtype its tensors view it as."""

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype):
        self.untyped, self.dtype = untyped, dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor record without a storage")
    t = torch.empty(0, dtype=storage.dtype)
    t.set_(storage.untyped, int(storage_offset), torch.Size(size), tuple(stride))
    return t


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type(func, new_type, args, state):
    """Tensor subclasses come back as plain tensors (``func`` is an allowed rebuild function or inert)."""
    return func(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "dict"): dict,
    ("builtins", "list"): list, ("builtins", "tuple"): tuple, ("builtins", "int"): int,
    ("builtins", "float"): float, ("builtins", "complex"): complex, ("builtins", "bool"): bool,
    ("builtins", "str"): str, ("builtins", "bytes"): bytes, ("builtins", "bytearray"): bytearray,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
}


# Globals a weights file has no reason to name: they exist to run code (a shell, an import, eval...).
# A pickle naming one is refused outright instead of being kept as an inert placeholder.
_CODE_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "code",
    "codeop", "ctypes", "pickle", "_pickle", "marshal", "webbrowser", "multiprocessing", "signal",
    "asyncio", "commands", "platform", "pdb", "timeit", "trace", "cProfile", "profile",
})
_CODE_BUILTINS = frozenset({
    "eval", "exec", "compile", "__import__", "open", "getattr", "setattr", "delattr", "globals",
    "locals", "vars", "input", "breakpoint", "exit", "quit", "help", "memoryview", "apply", "execfile",
})


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a global whose only use in a pickle is running code."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.global_name = f"{module}.{name}"


def _runs_code(module: str, name: str) -> bool:
    return module.split(".", 1)[0] in _CODE_MODULES or (module in ("builtins", "__builtin__")
                                                        and name in _CODE_BUILTINS)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED`` (plus torch dtypes and storage types); a global that
    runs code (``os.system``, ``builtins.eval``, ``subprocess.*``...) raises :class:`RefusedPickle`;
    anything else becomes a fresh ``Foreign`` subclass. Storages come from the archive's ``data/``
    records."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, torch.UntypedStorage] = {}
        self._foreign: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:              # protocol <= 2 writes py2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if _runs_code(module, name):
            raise RefusedPickle(module, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        key = (module, name)
        if key not in self._foreign:
            self._foreign[key] = type(str(name), (Foreign,), {"_module": module, "_name": name,
                                                             "__module__": "bioseq.checkpoints"})
        return self._foreign[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("storage record of an unknown type")
        key = key.decode() if isinstance(key, bytes) else str(key)
        dtype = storage_type.dtype
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            nbytes = int(numel) * torch.empty(0, dtype=dtype).element_size()
            if len(raw) != nbytes:
                raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes, expected {nbytes}")
            data = torch.frombuffer(raw, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if self._byteorder != sys.byteorder and itemsize > 1:      # reverse the bytes of each element
                data = data.view(-1, itemsize).flip(1).reshape(-1)
            self._storages[key] = data.contiguous().untyped_storage()
        return _Storage(self._storages[key], dtype)


def load_torch_restricted(path: str | Path) -> Any:
    """Read a ``torch.save`` zip archive without importing or calling anything foreign.

    Tensors (and parameters, as plain tensors) are rebuilt on CPU from the raw storage records;
    dicts, lists, tuples, sets, numbers and strings are rebuilt; a file naming a code-running global
    (``os.system``, ``builtins.eval``, ...) is refused with a :class:`CheckpointError`; every other
    object becomes an inert :class:`Foreign` placeholder.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch zip archive (legacy pickles with foreign objects "
                              "are not supported; re-save it with torch.save)")
    with zipfile.ZipFile(path) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: no single '<archive>/data.pkl' record")
        prefix = pkls[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pkls[0])), archive, prefix, byteorder)
        try:
            return unpickler.load()
        except RefusedPickle as e:
            raise CheckpointError(f"{path}: refused: the pickle calls {e.global_name}, which would run "
                                  "code (not loaded)") from None
        except (pickle.UnpicklingError, TypeError, ValueError, KeyError, RuntimeError, EOFError) as e:
            raise CheckpointError(f"{path}: cannot extract tensors safely: {e}") from None


# --------------------------------------------------------------------------------------------------
# reading any weights file
# --------------------------------------------------------------------------------------------------


def _tensor_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):   # Lightning checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no tensor dictionary (state_dict) found")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``, or a pickle (``.bin/.pt/.pth/.ckpt``; a Lightning
    checkpoint gives its ``state_dict``). Pickles: ``torch.load(weights_only=True)``, else the
    restricted unpickler. Never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - report any decoding problem as one line
            raise CheckpointError(f"{path}: cannot read safetensors: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = load_torch_restricted(path)
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {str(e).splitlines()[0]}") from None
    return _tensor_dict(obj, path)


# --------------------------------------------------------------------------------------------------
# HyenaDNA: official names -> bioseq names
# --------------------------------------------------------------------------------------------------

_HYENA_RULES = [
    (r"embeddings\.word_embeddings\.weight", "embed_tokens.weight"),
    (r"ln_f\.(weight|bias)", r"ln_f.\1"),
    (r"layers\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"layers.\1.\2.\3"),
    (r"layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
    (r"layers\.(\d+)\.mixer\.(in_proj|out_proj|short_filter)\.(weight|bias)", r"layers.\1.mixer.\2.\3"),
    (r"layers\.(\d+)\.mixer\.filter_fn\.bias", r"layers.\1.mixer.filter_fn.bias"),
    (r"layers\.(\d+)\.mixer\.filter_fn\.pos_emb\.(z|t)", r"layers.\1.mixer.filter_fn.\2"),
    (r"layers\.(\d+)\.mixer\.filter_fn\.modulation\.deltas", r"layers.\1.mixer.filter_fn.deltas"),
]


def convert_hyena_official(state_dict: dict[str, torch.Tensor], *, return_extras: bool = False):
    """Official / ``-hf`` / standalone HyenaDNA keys -> ``models.hyena.HyenaDNA`` keys.

    Accepts the prefixes ``model.`` (Lightning), ``hyena.`` (-hf) or none, and the ``.mixer.layer.`` /
    ``.mlp.layer.`` activation-checkpointing wrapper names. The shared Sin frequency
    (``implicit_filter.{1,3,5}.freq``, one tensor under several names) becomes ``filter_fn.freq``;
    ``implicit_filter.{0,2,4,6}`` become ``filter_fn.linears.{0,1,2,3}``. Tensors that are not part
    of the backbone (``lm_head.weight`` when it is not tied to the embedding, task heads) go to
    ``extras`` under their original names. Returns the converted dict, or ``(converted, extras)``.
    """
    out: dict[str, torch.Tensor] = {}
    extras: dict[str, torch.Tensor] = {}
    freqs: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        k = re.sub(r"^(model|hyena)\.", "", key)
        k = re.sub(r"\.(mixer|mlp)\.layer\.", r".\1.", k)
        if not k.startswith("backbone."):
            extras[key] = value
            continue
        k = k[len("backbone."):]
        m = re.fullmatch(r"layers\.(\d+)\.mixer\.filter_fn\.implicit_filter\.(\d+)\.(weight|bias|freq)", k)
        if m:
            layer, idx, what = m.group(1), int(m.group(2)), m.group(3)
            if what == "freq":
                name = f"layers.{layer}.mixer.filter_fn.freq"
                if name in freqs and not torch.equal(freqs[name].reshape(-1), value.reshape(-1)):
                    raise CheckpointError(f"{key}: the Sin frequencies of one filter differ "
                                          "(expected one shared tensor)")
                freqs[name] = value
                out[name] = value.reshape(-1)
            else:
                out[f"layers.{layer}.mixer.filter_fn.linears.{idx // 2}.{what}"] = value
            continue
        for pattern, repl in _HYENA_RULES:
            if re.fullmatch(pattern, k):
                out[re.sub(pattern, repl, k)] = value
                break
        else:
            extras[key] = value
    # A tied LM head is the embedding again: drop it. An untied one is kept for the LM module.
    for name in [n for n in extras if re.sub(r"^(model|hyena)\.", "", n) == "lm_head.weight"]:
        emb = out.get("embed_tokens.weight")
        if emb is not None and extras[name].shape == emb.shape and torch.equal(extras[name], emb):
            del extras[name]
        else:
            extras["lm_head.weight"] = extras.pop(name)
    if "embed_tokens.weight" not in out:
        raise CheckpointError("not a HyenaDNA state dict: no backbone.embeddings.word_embeddings.weight")
    return (out, extras) if return_extras else out


# --------------------------------------------------------------------------------------------------
# directories and the Hub
# --------------------------------------------------------------------------------------------------


def weights_file(directory: str | Path) -> Path:
    """The weights file of an official / -hf / bioseq directory (first match in a fixed order)."""
    directory = Path(directory)
    for name in ("model.safetensors", "weights.ckpt", "pytorch_model.bin", "model.ckpt", "last.ckpt"):
        if (directory / name).is_file():
            return directory / name
    ckpts = sorted(directory.glob("*.ckpt"))
    if len(ckpts) == 1:
        return ckpts[0]
    raise CheckpointError(f"{directory}: no weights file "
                          "(model.safetensors, weights.ckpt or pytorch_model.bin)")


def detect_layout(directory: str | Path) -> str:
    """``"bioseq"``, ``"official"`` or ``"hf"`` for a checkpoint directory (see the module doc)."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    wf = weights_file(directory)
    if "arch" in cfg and wf.name == "model.safetensors":
        return "bioseq"
    if wf.suffix == ".ckpt":
        return "official"
    return "hf"


def resolve_pretrained(spec: str | os.PathLike, hub_repos: dict[str, str] | None = None) -> Path:
    """A local directory as is; a preset name (via ``hub_repos``) or ``owner/name`` Hub id is downloaded
    with huggingface_hub (lazily imported; needs network) into its cache."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
    spec = str(spec)
    repo_id = (hub_repos or {}).get(spec, spec)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise CheckpointError(f"{spec}: no such directory, and not a known preset or Hub id")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{spec}: not a local directory; install huggingface_hub to download "
                              f"{repo_id}, or download it and pass the directory") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[
            "config.json", "*.ckpt", "*.safetensors", "pytorch_model.bin", "tokenizer*.json"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, ...: one line for the user
        raise CheckpointError(f"{spec}: download of {repo_id} failed: {str(e).splitlines()[0]}") from None
