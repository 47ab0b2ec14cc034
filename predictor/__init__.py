"""layoutcast's library API: `Predictor` and `search` (see DESIGN.md, "Python API")."""

from predictor.api import Prediction, Predictor
from predictor.search import SearchResult, search

__all__ = ["Prediction", "Predictor", "SearchResult", "search"]
