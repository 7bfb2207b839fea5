"""A receiver for the daemon's webhook triggers: it verifies the Standard Webhooks signature with
the `standardwebhooks` library (which also refuses a delivery more than 5 minutes old), reads the
CloudEvent with the CloudEvents SDK, and answers 204 (handled), 401 (not signed by us, altered or
too old), 413 (too big to be an event) or 400 (not a CloudEvent).

    WEBHOOK_SECRET=whsec_... python webhook_receiver.py 9000

Any 5xx it answers (or no answer within the trigger's timeout) makes the daemon try again later;
any other 4xx makes the event a dead letter at once. An event can come more than once (at least
once, and again after a retry): de-duplicate by its id if handling it twice would hurt.
"""

import hashlib
import os
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings import http
from cloudevents.core.exceptions import BaseCloudEventException
from standardwebhooks import Webhook, WebhookVerificationError

ATTRIBUTES_ID = "%sha256:"  # how webhook-id begins in binary mode
MAX_BODY = 1 << 20  # an event is at most 64 KiB of properties


def attributes_id(headers: list[tuple[str, str]]) -> str:
    """Binary mode's webhook-id: the SHA-256 of the ce-* and Content-Type headers as received."""
    lines = sorted(
        name.lower() + ":" + value.strip(" \t")
        for name, value in headers
        if name.lower().startswith("ce-") or name.lower() == "content-type"
    )
    return ATTRIBUTES_ID + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def verified(webhook: Webhook, headers: list[tuple[str, str]], body: bytes) -> http.HTTPMessage:
    """The delivery as an HTTP message whose signature covers every attribute it carries; else
    ``WebhookVerificationError`` (or ``ValueError`` for a malformed signature)."""
    fields = {name.lower(): value for name, value in headers}
    # The signed webhook-id says the mode. In binary mode the attributes are headers, which the
    # signature covers only through webhook-id: verify with the digest of the headers received,
    # so any header changed, added or removed fails verification.
    if fields.get("webhook-id", "").startswith(ATTRIBUTES_ID):
        fields["webhook-id"] = attributes_id(headers)
    else:  # structured mode: every attribute is in the signed body; no ce-* header is read
        fields = {name: value for name, value in fields.items() if not name.startswith("ce-")}
    webhook.verify(body, fields, json_parse=False)  # and refuses a timestamp 5 min away
    return http.HTTPMessage(fields, body)


def make_server(
    port: int, secret: str, handle: Callable[[str, str, dict[str, str]], None]
) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:``port`` calling ``handle(event_id, name, properties)``."""
    webhook = Webhook(secret)  # "whsec_<base64>"

    class Receiver(BaseHTTPRequestHandler):
        def answer(self, status: int) -> None:
            self.send_response(status)
            self.end_headers()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            if length > MAX_BODY:
                return self.answer(413)
            body = self.rfile.read(length)
            try:
                message = verified(webhook, self.headers.items(), body)
            except (WebhookVerificationError, ValueError):
                return self.answer(401)
            try:
                event = http.from_http_event(message)  # binary mode if it has ce-* headers
            except (BaseCloudEventException, ValueError):
                return self.answer(400)
            # type: the event's name; data: its properties; eventkind, principal: extensions.
            handle(event.get_id(), event.get_type(), event.get_data() or {})  # type: ignore[arg-type]
            self.answer(204)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Receiver)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    server = make_server(port, os.environ["WEBHOOK_SECRET"], lambda *event: print(*event))
    server.serve_forever()


if __name__ == "__main__":
    main()
