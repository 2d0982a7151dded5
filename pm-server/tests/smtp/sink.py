"""A real SMTP server process for pm-server's workflow tests.

Usage: python3 sink.py PORT OUTFILE
Accepts every message on 127.0.0.1:PORT and appends one JSON line per message to OUTFILE:
{"from", "to", "subject", "message_id", "body"}. Prints "ready" once listening.
Python 3.11 still ships `smtpd` (deprecated, removed in 3.12); the warning is silenced.
"""
import email
import json
import sys
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
import asyncore  # noqa: E402
import smtpd  # noqa: E402


class Sink(smtpd.SMTPServer):
    def __init__(self, addr, out):
        super().__init__(addr, None, decode_data=True)
        self.out = out

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        msg = email.message_from_string(data)
        line = {
            "from": mailfrom,
            "to": rcpttos,
            "subject": msg.get("Subject", ""),
            "message_id": msg.get("Message-ID", ""),
            "body": msg.get_payload(),
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        return None


if __name__ == "__main__":
    port, out = int(sys.argv[1]), sys.argv[2]
    Sink(("127.0.0.1", port), out)
    print("ready", flush=True)
    asyncore.loop()
