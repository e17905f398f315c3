"""schemathesis hooks for tests/realtime/test_contract.py (SCHEMATHESIS_HOOKS): the WHEP bodies are text."""

import schemathesis

# an SDP offer and a trickle-ICE fragment go on the wire as their text, as text/plain does
schemathesis.serializer.alias(["application/sdp", "application/trickle-ice-sdpfrag"], "text/plain")
