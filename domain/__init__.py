"""The pure model of an RFC 3903 Event State Compositor: no I/O, no clock, no threads."""

from .composition import (Composer, Composition, Contribution, compose_dialog_info,
                          compose_newest, compose_presence, dialog_composer, newest_composer,
                          presence_composer)
from .errors import (BadEvent, CompositorError, ConditionalRequestFailed, IntervalTooBrief,
                     InternalError, InvalidBody, MissingBody, StoreUnavailable, TooManyPublications,
                     UnsupportedMediaType)
from .etags import compose_etag, publication_id_of
from .notification import (NotifyJob, NotifyOutcome, SubscribeAccepted, SubscribeRequest,
                           SubscriptionPolicy)
from .packages import (BUILT_IN, DEFAULT_PACKAGES, EventPackage, EventPackages,
                       custom_package)
from .publication import EVENT_TYPES, Audit, Publication, body_hash
from .requests import Classified, ExpiryPolicy, Operation, PublishRequest, classify
from .resource import (InvalidResource, address_of_record, other_address_of_record,
                       sip_address_of_record)
from .subscription import (SUBSCRIPTION_EVENT_TYPES, CSeqOutOfOrder, NoMoreNotifies,
                           NotTheSubscriber, Notify, NotifyTarget, Subscription,
                           SubscriptionNotActive)

__all__ = [
    "Audit", "BUILT_IN", "BadEvent", "Classified", "Composer", "Composition",
    "CompositorError", "Contribution", "compose_dialog_info", "compose_newest",
    "compose_presence", "dialog_composer", "newest_composer", "presence_composer",
    "CSeqOutOfOrder", "NoMoreNotifies", "Notify", "NotifyTarget", "SUBSCRIPTION_EVENT_TYPES",
    "Subscription", "SubscriptionNotActive", "NotifyJob", "NotifyOutcome",
    "NotTheSubscriber",
    "SubscribeAccepted", "SubscribeRequest", "SubscriptionPolicy",
    "ConditionalRequestFailed", "DEFAULT_PACKAGES", "EVENT_TYPES", "EventPackage",
    "EventPackages", "ExpiryPolicy", "IntervalTooBrief", "InternalError", "InvalidBody", "InvalidResource",
    "MissingBody", "Operation", "Publication", "PublishRequest", "StoreUnavailable",
    "TooManyPublications", "UnsupportedMediaType", "address_of_record", "body_hash",
    "classify", "compose_etag", "custom_package", "other_address_of_record",
    "publication_id_of", "sip_address_of_record",
]
