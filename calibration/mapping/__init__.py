"""Calibration mappings (feature matrix → normalised screen point): the model families, their
selection by nested leave-one-target-out, and a synthetic calibration for benchmarks."""

from gazeloop.calibration.mapping.families import (
    DEFAULT_MAPPING,
    MAPPINGS,
    MAX_POLY2_FEATURES,
    PARAMS_FORMAT,
    PARAMS_VERSION,
    AffineMapping,
    NotEnoughTargets,
    NotFitted,
    Poly2Mapping,
    RBFMapping,
    RidgeMapping,
    ScreenMapping,
    make_mapping,
    mapping_class,
    mapping_from_params,
    min_targets,
)
from gazeloop.calibration.mapping.selection import (
    constant_baseline_loto,
    fit_select,
    loto_predict,
    mean_error,
    target_errors,
)
from gazeloop.calibration.mapping.synthetic import benchmark_fit, synthetic_calibration

__all__ = [
    "DEFAULT_MAPPING",
    "MAPPINGS",
    "MAX_POLY2_FEATURES",
    "PARAMS_FORMAT",
    "PARAMS_VERSION",
    "AffineMapping",
    "NotEnoughTargets",
    "NotFitted",
    "Poly2Mapping",
    "RBFMapping",
    "RidgeMapping",
    "ScreenMapping",
    "benchmark_fit",
    "constant_baseline_loto",
    "fit_select",
    "loto_predict",
    "make_mapping",
    "mapping_class",
    "mapping_from_params",
    "mean_error",
    "min_targets",
    "synthetic_calibration",
    "target_errors",
]
