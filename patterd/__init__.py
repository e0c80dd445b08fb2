"""patterd — a voice-gateway daemon: an AI voice agent on a Twilio or Telnyx phone number.

>>> from patterd import Patter, Twilio, Telnyx
"""

from .agent import Agent
from .call.outbound import CallError
from .carriers.telnyx import Carrier as Telnyx
from .carriers.twilio import Carrier as Twilio
from .config import ConfigError
from .patter import Patter

__version__ = "0.1.0"
__all__ = ["Agent", "CallError", "Patter", "Twilio", "Telnyx", "ConfigError", "__version__"]
