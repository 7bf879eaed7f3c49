"""Attribution methods, registered by name. ``METHODS`` maps each name to its class."""

from ...registry import METHODS
from .base import AttributionMethod, MethodOptions, make_method
from .datainf import DataInf
from .first_order import GradCos, GradDot, TracIn
from .influence import InfluenceArnoldi, InfluenceCG, InfluenceExact, InfluenceLiSSA
from .kfac import InfluenceEKFAC, InfluenceKFAC
from .trak import TRAK

__all__ = [
    "METHODS", "AttributionMethod", "MethodOptions", "make_method", "GradDot", "GradCos", "TracIn",
    "InfluenceExact", "InfluenceCG", "InfluenceLiSSA", "InfluenceArnoldi", "InfluenceKFAC",
    "InfluenceEKFAC", "TRAK", "DataInf",
]
