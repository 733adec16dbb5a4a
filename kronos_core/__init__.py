"""kronos_core: the Kronos tokenizer and predictor in pure PyTorch, upstream-compatible.

Public API::

    from kronos_core import KronosTokenizer, Kronos, KronosPredictor
    tokenizer = KronosTokenizer.from_pretrained("path/to/Kronos-Tokenizer-base")
    model = Kronos.from_pretrained("path/to/Kronos-small")
    predictor = KronosPredictor(model, tokenizer, max_context=512)
    forecast = predictor.predict(df, x_timestamp, y_timestamp, pred_len=24)
"""

from kronos_core._version import __version__
from kronos_core.config import PredictorConfig, TokenizerConfig
from kronos_core.engine import GenerationStats, KronosEngine, SamplingParams
from kronos_core.exceptions import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    InputError,
    KronosError,
)
from kronos_core.model import Kronos
from kronos_core.predictor import KronosPredictor
from kronos_core.presets import PRESETS, Preset, build_model, build_pair, get_preset, preset_config
from kronos_core.stream_types import (
    ContextTokens,
    SeriesForecast,
    SeriesWindow,
    StreamForecaster,
    TokenState,
    derive_seed,
)
from kronos_core.streaming import StreamConfig, StreamingForecaster
from kronos_core.tokenizer import KronosTokenizer

__all__ = [
    "PRESETS",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ContextTokens",
    "GenerationStats",
    "KronosEngine",
    "SamplingParams",
    "SeriesForecast",
    "SeriesWindow",
    "StreamConfig",
    "StreamForecaster",
    "StreamingForecaster",
    "TokenState",
    "derive_seed",
    "ConfigError",
    "InputError",
    "Kronos",
    "KronosError",
    "KronosPredictor",
    "KronosTokenizer",
    "Preset",
    "PredictorConfig",
    "TokenizerConfig",
    "__version__",
    "build_model",
    "build_pair",
    "get_preset",
    "preset_config",
]
