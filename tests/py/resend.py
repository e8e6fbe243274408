#!/usr/bin/env python3
"""Send one message's exact bytes again, as a sender retrying after an unclear outcome would.

    resend.py HOST PORT FROM RCPT FILE

FILE must end with CRLF (then smtplib sends it unchanged, dot-stuffing aside). Exits non-zero
unless the message is accepted.
"""

import smtplib
import sys


def main():
    host, port, sender, rcpt, path = sys.argv[1:6]
    with open(path, "rb") as f:
        data = f.read()
    if not data.endswith(b"\r\n"):
        sys.exit("%s does not end with CRLF" % path)
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        refused = s.sendmail(sender, [rcpt], data)
        if refused:
            sys.exit("refused %r" % refused)


if __name__ == "__main__":
    main()
