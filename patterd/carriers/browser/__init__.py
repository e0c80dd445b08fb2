"""The browser "carrier": a test call from the console's "Call the agent" button.

The page streams its microphone over an authenticated WebSocket and plays the agent back; the
call runs the same session, turn-taking, backends, records and metrics as a phone call,
labelled carrier ``browser`` (priced at 0: no carrier bills it). See :mod:`.route`.
"""

from .control import BrowserControl
from .media import BrowserMedia
from .route import BROWSER_CALL_PATH, browser_call_route

__all__ = ["BROWSER_CALL_PATH", "BrowserControl", "BrowserMedia", "browser_call_route"]
