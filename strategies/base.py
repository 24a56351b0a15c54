"""The interface a strategy plugs in through, in one import for strategy authors.

The race defines it (toolkit.race.contract: Strategy, RaceContext, Fitted); encoders come from
toolkit.retrieval.encoder and the weights vocabulary from toolkit.models.weights.
"""
from toolkit.models.weights import WeightsStatus, WeightsUnavailable, host_reachable, hugging_face_cache_dir
from toolkit.race.contract import Fitted, RaceContext, Strategy
from toolkit.retrieval.encoder import (DerivedEncoder, Encoder, TorchEncoder, default_device, fingerprint_of,
                                       l2_normalise)

__all__ = ["DerivedEncoder", "Encoder", "Fitted", "RaceContext", "Strategy", "TorchEncoder", "WeightsStatus",
           "WeightsUnavailable", "default_device", "fingerprint_of", "host_reachable", "hugging_face_cache_dir",
           "l2_normalise"]
