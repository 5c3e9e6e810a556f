"""Cost models: candidate features from lowered loop nests, an XGBoost model and a random baseline."""

from .base import CostModel, normalized_throughput
from .features import FEATURE_NAMES, NUM_FEATURES, FeatureExtractor, features_of_module
from .random_model import RandomCostModel
from .xgb_model import CostModelError, XGBConfig, XGBCostModel

__all__ = [
    "CostModel", "CostModelError", "FEATURE_NAMES", "FeatureExtractor", "NUM_FEATURES", "RandomCostModel",
    "XGBConfig", "XGBCostModel", "features_of_module", "normalized_throughput",
]
