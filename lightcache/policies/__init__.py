"""Caching policies, one file each, implementing lightcache.policies.base.CachePolicy."""

from lightcache.policies.base import CachePolicy, CallInfo
from lightcache.policies.deepcache import DeepCache
from lightcache.policies.easycache import EasyCache
from lightcache.policies.forecast import ForecastCache
from lightcache.policies.precisecache import PreciseCache

__all__ = ["CachePolicy", "CallInfo", "DeepCache", "EasyCache", "ForecastCache", "PreciseCache"]
