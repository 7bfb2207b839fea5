"""A receiver for the daemon's webhook triggers: it checks the signature, reads the CloudEvent with
the CloudEvents SDK, and answers 204 (handled), 401 (not signed by us) or 400 (not a CloudEvent).

    WEBHOOK_SECRET=... python webhook_receiver.py 9000

Any 5xx it answers (or no answer within the trigger's timeout) makes the daemon try again later;
any other 4xx makes the event a dead letter at once.
"""

import hashlib
import hmac
import os
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings import http
from cloudevents.core.exceptions import BaseCloudEventException


def signed(secret: bytes, body: bytes, signature: str) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)  # constant time


def make_server(
    port: int, secret: bytes, handle: Callable[[str, str, dict[str, str]], None]
) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:``port`` calling ``handle(event_id, name, properties)``."""

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not signed(secret, body, self.headers.get("X-CustomEvent-Signature", "")):
                self.send_response(401)
                self.end_headers()
                return
            try:
                message = http.HTTPMessage(dict(self.headers.items()), body)
                event = http.from_http_event(message)  # binary or structured mode
            except BaseCloudEventException:
                self.send_response(400)
                self.end_headers()
                return
            # type: the event's name; data: its properties; eventkind, principal: extensions.
            handle(event.get_id(), event.get_type(), event.get_data() or {})  # type: ignore[arg-type]
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Receiver)


def main() -> None:
    secret = os.environ["WEBHOOK_SECRET"].encode()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    make_server(port, secret, lambda i, name, props: print(name, i, props)).serve_forever()


if __name__ == "__main__":
    main()
