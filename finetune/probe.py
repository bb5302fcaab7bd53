"""Linear probes: scikit-learn logistic regression on frozen embeddings or on k-mer counts.

* :func:`kmer_features` -- k-mer frequency vectors (sparse CSR ``[N, 4**k]``), vectorised with numpy:
  the no-deep-learning baseline that every results table carries.
* :func:`embedding_features` -- mean-pooled (or other pooling) hidden states of a frozen backbone,
  computed in-process; :func:`load_embedding_file` reads the HDF5/npy files of ``bioseq embed``.
* :func:`fit_probe` -- ``LogisticRegression`` with ``C`` chosen by stratified K-fold cross-validation on
  the training set only, then refitted on all of train and scored once on test.
* :func:`classification_metrics` -- accuracy, MCC, macro-F1 (binary F1 for two classes as well) and
  AUROC, the same definitions as the finetuning metrics.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from bioseq.errors import BioseqError

_BASE_CODE = np.full(256, -1, dtype=np.int64)
for _i, _b in enumerate(b"ACGT"):
    _BASE_CODE[_b] = _i
    _BASE_CODE[ord(chr(_b).lower())] = _i


def kmer_features(sequences: list[str], k: int = 6, normalize: bool = True) -> sparse.csr_matrix:
    """k-mer counts of each sequence as a CSR matrix ``[N, 4**k]`` (float32).

    Column ``c`` is the k-mer whose base-4 digits (A=0 C=1 G=2 T=3, first base most significant) give
    ``c``. Windows containing a non-ACGT character (N, IUPAC) are skipped. ``normalize`` divides each row
    by its number of counted windows (frequencies), so sequences of different lengths are comparable.
    All sequences are handled in one pass over their concatenation (no per-k-mer Python loop).
    """
    if k < 1 or k > 12:
        raise BioseqError(f"k-mer size must be in 1..12, got {k}")
    n = len(sequences)
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
    buf = np.frombuffer("".join(sequences).encode("ascii", "replace"), dtype=np.uint8)
    codes = _BASE_CODE[buf]
    total = len(codes)
    if total < k:
        return sparse.csr_matrix((n, 4**k), dtype=np.float32)
    nwin = total - k + 1
    kmer = np.zeros(nwin, dtype=np.int64)
    bad = np.zeros(nwin, dtype=bool)
    for j in range(k):  # k vector passes
        c = codes[j : j + nwin]
        kmer = kmer * 4 + np.maximum(c, 0)
        bad |= c < 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    row = np.repeat(np.arange(n), lengths)[:nwin]
    # a window is inside its sequence when its start + k <= sequence end
    ends = (starts + lengths)[row]
    valid = ~bad & (np.arange(nwin) + k <= ends)
    mat = sparse.coo_matrix(
        (np.ones(int(valid.sum()), dtype=np.float32), (row[valid], kmer[valid])), shape=(n, 4**k)
    ).tocsr()
    mat.sum_duplicates()
    if normalize:
        counts = np.asarray(mat.sum(axis=1)).ravel()
        mat = sparse.diags(1.0 / np.maximum(counts, 1.0)).dot(mat).astype(np.float32).tocsr()
    return mat


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None = None, num_classes: int | None = None
) -> dict[str, float]:
    """accuracy, mcc, f1 (binary: positive-class F1; multiclass: macro), f1_macro, auroc (when scores are
    given: binary uses the positive-class probability, multiclass one-vs-rest macro)."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    num_classes = num_classes or int(max(y_true.max(), y_pred.max())) + 1
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        "f1_macro": float(
            skm.f1_score(y_true, y_pred, average="macro", labels=list(range(num_classes)), zero_division=0)
        ),
    }
    out["f1"] = (
        float(skm.f1_score(y_true, y_pred, average="binary", zero_division=0))
        if num_classes == 2
        else out["f1_macro"]
    )
    if y_score is not None and len(np.unique(y_true)) == num_classes:
        y_score = np.asarray(y_score)
        if num_classes == 2:
            out["auroc"] = float(skm.roc_auc_score(y_true, y_score[:, 1] if y_score.ndim == 2 else y_score))
        else:
            out["auroc"] = float(skm.roc_auc_score(y_true, y_score, multi_class="ovr", average="macro"))
    return out


def fit_probe(
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0),
    cv: int = 5,
    seed: int = 0,
    scoring: str = "accuracy",
    max_iter: int = 2000,
    standardize: bool = True,
) -> dict:
    """Logistic regression with ``C`` picked by stratified ``cv``-fold CV on train; scored on test.

    Dense inputs are standardised with the training mean/std (sparse ones are scaled by the training
    column std without centring, keeping them sparse). Returns the test metrics plus ``C`` and
    ``cv_score`` (mean CV ``scoring`` at the chosen C).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    y_train = np.asarray(y_train)
    if len(np.unique(y_train)) < 2:
        raise BioseqError("linear probe needs at least two classes in the training labels")
    is_sparse = sparse.issparse(x_train)

    def model(C: float):
        steps = []
        if standardize:
            steps.append(MaxAbsScaler() if is_sparse else StandardScaler())
        steps.append(LogisticRegression(C=C, max_iter=max_iter))
        return make_pipeline(*steps)

    folds = StratifiedKFold(
        n_splits=min(cv, int(np.bincount(y_train).min())), shuffle=True, random_state=seed
    )
    scores = {
        C: float(np.mean(cross_val_score(model(C), x_train, y_train, cv=folds, scoring=scoring))) for C in Cs
    }
    best_c = max(Cs, key=lambda c: (scores[c], -c))
    clf = model(best_c).fit(x_train, y_train)
    proba = clf.predict_proba(x_test)
    pred = clf.classes_[proba.argmax(1)]
    out = classification_metrics(y_test, pred, proba, num_classes=len(clf.classes_))
    out.update(C=best_c, cv_score=scores[best_c])
    return out


def embedding_features(
    backbone,
    tokenizer,
    sequences: list[str],
    *,
    pooling: str = "mean",
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Pooled final hidden states of a frozen backbone, computed in-process: float32 ``[N, H]``.

    Runs the ``bioseq embed`` engine (``bioseq.embed.Embedder``: length-sorted batches of at most
    ``batch_size`` sequences, right padding, ``bioseq.pooling``) in memory; sequences longer than
    ``max_length`` tokens (default: the backbone's limit) are cut to it.
    """
    from bioseq.embed import Embedder, EmbedOptions, embed_sequences

    options = EmbedOptions(pools=(pooling,), max_length=max_length, long="truncate", device=device,
                           max_batch_size=batch_size)
    return embed_sequences(Embedder(backbone, tokenizer, options), sequences)[pooling]


def load_embedding_file(path, pooling: str = "mean") -> tuple[list[str], np.ndarray]:
    """(ids, ``[N, D]`` pooled embeddings) from a ``bioseq embed`` output (HDF5 file or npy directory)."""
    from bioseq.embed import read_embeddings

    data = read_embeddings(path, tokens=False)
    if pooling not in data:
        have = [p for p in ("mean", "max", "first", "last") if p in data]
        raise BioseqError(f"{path}: no '{pooling}' pooling stored (has: {', '.join(have) or 'none'})")
    return list(data["ids"]), np.asarray(data[pooling], dtype=np.float32)


def labels_for_ids(ids: list[str], labels: dict[str, str] | None = None, source: object = "") -> list[str]:
    """Label strings for record ids: from ``labels`` (id -> label, e.g. :func:`read_labels_file`), else
    the text after the last ``|`` of the id (NT-style ``>name|label`` FASTA headers)."""
    out = []
    for rid in ids:
        if labels is not None:
            key = rid if rid in labels else rid.rsplit("|", 1)[0]
            if key not in labels:
                raise BioseqError(f"{source}: record '{rid}' has no entry in the labels file")
            out.append(labels[key])
        elif "|" in rid:
            out.append(rid.rsplit("|", 1)[1])
        else:
            raise BioseqError(f"{source}: record '{rid}' has no '|label' suffix; pass a labels file")
    return out
