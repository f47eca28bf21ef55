"""A real SMTP server for gateway/tests/notify.rs, on aiosmtpd (Debian: python3-aiosmtpd).

Listens on 127.0.0.1:PORT (0 = any free port), prints "ready PORT" once it accepts
connections, and writes each message it receives to DIR/NNNN.json, decoded:
{"mail_from", "rcpt_tos", "subject", "body", "headers": {...}}. Options:
  --tls starttls|implicit --cert PEM --key PEM   STARTTLS (required) or TLS from the start
  --auth USER:PASSWORD                            require AUTH (PLAIN/LOGIN) with these
  --reject-domain DOMAIN                          answer 550 to RCPT TO any address there
"""

import argparse
import asyncio
import email
import email.policy
import json
import logging
import os
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    def __init__(self, folder, reject_domain):
        self.folder = folder
        self.reject_domain = reject_domain
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_domain and address.lower().endswith("@" + self.reject_domain):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain",))
        self.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": str(message["subject"]),
            "body": part.get_content() if part is not None else "",
            "headers": {k: str(v) for k, v in message.items()},
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": bool(session.authenticated),
        }
        path = os.path.join(self.folder, "%04d.json" % self.count)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False, indent=1)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 OK queued as %04d" % self.count


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return check


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tls", choices=["starttls", "implicit"])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--auth")
    parser.add_argument("--reject-domain")
    args = parser.parse_args()
    # With implicit TLS, AUTH is over TLS although aiosmtpd cannot tell; keep the log quiet.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    context = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    starttls = args.tls == "starttls"
    auth = None
    if args.auth:
        user, password = args.auth.split(":", 1)
        auth = authenticator(user, password)
    handler = Sink(args.dir, args.reject_domain)
    loop = asyncio.get_running_loop()

    def factory():
        return SMTP(
            handler,
            hostname="smtp-sink.test",
            tls_context=context if starttls else None,
            require_starttls=starttls,
            authenticator=auth,
            auth_required=auth is not None,
            # aiosmtpd counts only STARTTLS as TLS; with implicit TLS the whole session is.
            auth_require_tls=starttls,
            loop=loop,
        )

    server = await loop.create_server(
        factory, "127.0.0.1", args.port, ssl=context if args.tls == "implicit" else None
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write("ready %d\n" % port)
    sys.stdout.flush()
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
