"""Published reference numbers shown beside our results (all as fractions in [0, 1]).

Sources (see also ``../shared/data/published_numbers.md``, which records how each was obtained):

* ``GB-CNN`` -- the Genomic Benchmarks PyTorch CNN baseline, test accuracy, from the GB repository
  ``experiments/README.md`` (Grešová et al. 2023, BMC Genomic Data 24:25).
* ``HyenaDNA`` -- HyenaDNA (Nguyen et al. 2023, arXiv:2306.15794), as listed in the GB repository README.
* ``Caduceus-PS`` / ``Caduceus-Ph`` / ``CNN (Caduceus)`` / ``HyenaDNA (Caduceus)`` -- Schiff et al. 2024,
  arXiv:2403.03234, Table 1 (GB, 5-fold CV, ~470k-parameter models) and Table 2 (NT, mean of 10 seeds).
  These were transcribed from a third-party copy of the tables; check against the paper before quoting.
"""

from __future__ import annotations

import re
from pathlib import Path

CITATIONS = {
    "GB-CNN": "Gresova et al. 2023 (Genomic Benchmarks), repo experiments/README.md, PyTorch CNN",
    "HyenaDNA": "Nguyen et al. 2023, arXiv:2306.15794 (as listed in the Genomic Benchmarks README)",
    "CNN (Caduceus T1)": "Schiff et al. 2024, arXiv:2403.03234, Table 1",
    "HyenaDNA (Caduceus T1)": "Schiff et al. 2024, arXiv:2403.03234, Table 1",
    "Caduceus-PS": "Schiff et al. 2024, arXiv:2403.03234, Table 1 (GB) / Table 2 (NT)",
    "Caduceus-Ph": "Schiff et al. 2024, arXiv:2403.03234, Table 2 (NT)",
}

# dataset -> {source: top-1 test accuracy}
GENOMIC_BENCHMARKS = {
    "dummy_mouse_enhancers_ensembl": {
        "GB-CNN": 0.690,
        "HyenaDNA": 0.851,
        "CNN (Caduceus T1)": 0.715,
        "HyenaDNA (Caduceus T1)": 0.780,
        "Caduceus-PS": 0.793,
    },
    "demo_coding_vs_intergenomic_seqs": {
        "GB-CNN": 0.876,
        "HyenaDNA": 0.913,
        "CNN (Caduceus T1)": 0.892,
        "HyenaDNA (Caduceus T1)": 0.904,
        "Caduceus-PS": 0.910,
    },
    "demo_human_or_worm": {
        "GB-CNN": 0.930,
        "HyenaDNA": 0.966,
        "CNN (Caduceus T1)": 0.942,
        "HyenaDNA (Caduceus T1)": 0.964,
        "Caduceus-PS": 0.968,
    },
    "human_enhancers_cohn": {
        "GB-CNN": 0.695,
        "HyenaDNA": 0.742,
        "CNN (Caduceus T1)": 0.702,
        "HyenaDNA (Caduceus T1)": 0.729,
        "Caduceus-PS": 0.745,
    },
    "human_enhancers_ensembl": {
        "GB-CNN": 0.689,
        "HyenaDNA": 0.892,
        "CNN (Caduceus T1)": 0.744,
        "HyenaDNA (Caduceus T1)": 0.849,
        "Caduceus-PS": 0.900,
    },
    "human_ensembl_regulatory": {
        "GB-CNN": 0.933,
        "HyenaDNA": 0.938,
        "CNN (Caduceus T1)": 0.872,
        "HyenaDNA (Caduceus T1)": 0.869,
        "Caduceus-PS": 0.873,
    },
    "human_nontata_promoters": {
        "GB-CNN": 0.846,
        "HyenaDNA": 0.966,
        "CNN (Caduceus T1)": 0.861,
        "HyenaDNA (Caduceus T1)": 0.944,
        "Caduceus-PS": 0.945,
    },
    "human_ocr_ensembl": {
        "GB-CNN": 0.680,
        "HyenaDNA": 0.809,
        "CNN (Caduceus T1)": 0.698,
        "HyenaDNA (Caduceus T1)": 0.783,
        "Caduceus-PS": 0.818,
    },
    "drosophila_enhancers_stark": {"GB-CNN": 0.586},
}

# task -> {source: value of the task's metric (MCC / F1 / accuracy)}
NUCLEOTIDE_TRANSFORMER = {
    "H3": {"Caduceus-Ph": 0.815, "Caduceus-PS": 0.799},
    "H3K14ac": {"Caduceus-Ph": 0.631, "Caduceus-PS": 0.541},
    "H3K36me3": {"Caduceus-Ph": 0.601, "Caduceus-PS": 0.609},
    "H3K4me1": {"Caduceus-Ph": 0.523, "Caduceus-PS": 0.488},
    "H3K4me2": {"Caduceus-Ph": 0.487, "Caduceus-PS": 0.388},
    "H3K4me3": {"Caduceus-Ph": 0.544, "Caduceus-PS": 0.440},
    "H3K79me3": {"Caduceus-Ph": 0.697, "Caduceus-PS": 0.676},
    "H3K9ac": {"Caduceus-Ph": 0.622, "Caduceus-PS": 0.604},
    "H4": {"Caduceus-Ph": 0.811, "Caduceus-PS": 0.789},
    "H4ac": {"Caduceus-Ph": 0.621, "Caduceus-PS": 0.525},
    "enhancers": {"Caduceus-Ph": 0.546, "Caduceus-PS": 0.491},
    "enhancers_types": {"Caduceus-Ph": 0.439, "Caduceus-PS": 0.416},
    "promoter_all": {"Caduceus-Ph": 0.970, "Caduceus-PS": 0.967},
    "promoter_no_tata": {"Caduceus-Ph": 0.969, "Caduceus-PS": 0.968},
    "promoter_tata": {"Caduceus-Ph": 0.953, "Caduceus-PS": 0.957},
    "splice_sites_all": {"Caduceus-Ph": 0.940, "Caduceus-PS": 0.927},
    "splice_sites_acceptors": {"Caduceus-Ph": 0.937, "Caduceus-PS": 0.936},
    "splice_sites_donors": {"Caduceus-Ph": 0.948, "Caduceus-PS": 0.874},
}


def published_for(dataset: str) -> dict[str, float]:
    """Published numbers for a GB dataset or NT task name (empty dict when none are known)."""
    return dict(GENOMIC_BENCHMARKS.get(dataset) or NUCLEOTIDE_TRANSFORMER.get(dataset) or {})


def known_datasets() -> set[str]:
    return set(GENOMIC_BENCHMARKS) | set(NUCLEOTIDE_TRANSFORMER)


def dataset_from_path(path) -> str | None:
    """The benchmark dataset a data file belongs to when its name appears in the path (a folder such as
    ``human_ocr_ensembl/`` or a file such as ``H3_train.fna``), else None. The innermost match wins."""
    known = known_datasets()
    for part in reversed(Path(str(path)).parts):
        stem = part.split(".")[0]
        for candidate in (part, stem, re.sub(r"[_-](train|test|val|valid|dev)([_-].*)?$", "", stem)):
            if candidate in known:
                return candidate
    return None
