"""The compositor application: event store, current-state view, expiry, change feed."""

from .compositor import Compositor
from .expiry import ExpiryScheduler
from .feed import FeedConsumer
from .records import Accepted, EventRecord, Found
from .store_url import DEFAULT_STORE_URL, BadStoreURL, StoreConfig, parse_store_url

__all__ = ["Accepted", "BadStoreURL", "Compositor", "DEFAULT_STORE_URL", "EventRecord",
           "ExpiryScheduler", "FeedConsumer", "Found", "StoreConfig", "parse_store_url"]
