"""Hardware model: device profiles, per-kernel latency prediction, calibration, width selection and search."""

from edgekd.hardware.graph import GraphCost, Kernel, cached_onnx, export_onnx, graph_cost  # noqa: F401
from edgekd.hardware.latency import (Coefficients, Prediction, datasheet_coefficients, features,  # noqa: F401
                                     fit_coefficients, predict_cost, predict_latency_ms)
from edgekd.hardware.select import Candidate, Selection, pareto_front, search, select_width  # noqa: F401
from edgekd.modelfile import parse_shape  # noqa: F401
from edgekd.hardware.targets import Target, calibration_path, list_targets, load_target, target_names  # noqa: F401
