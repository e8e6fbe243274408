#!/usr/bin/env python3
"""Send a few messages to smtp-in with Python's smtplib (standard library only).

    smtplib_cases.py HOST PORT OUTDIR RCPT_A RCPT_B

RCPT_A and RCPT_B should live on different stores. Every message is written byte for byte to
OUTDIR/<name>.eml before it is sent, and OUTDIR/manifest.json lists them with their envelopes,
so the caller can check that exactly those bytes arrived. Exits non-zero if any recipient or
message is refused.
"""

import json
import os
import smtplib
import sys
from email import policy
from email.message import EmailMessage


def plain(rcpts):
    m = EmailMessage(policy=policy.SMTP)
    m["From"] = "Bob Sender <bob@remote.test>"
    m["To"] = ", ".join(rcpts)
    m["Subject"] = "smtplib to " + " and ".join(rcpts)
    m["Date"] = "Sun, 22 Nov 2026 10:00:00 +0000"
    m["Message-ID"] = "<smtplib-%d@remote.test>" % len(rcpts)
    m.set_content(
        "Hello from smtplib.\n"
        ".a line that starts with a dot\n"
        ".\n"
        "..two dots\n"
        "the end\n"
    )
    return m.as_bytes()


def utf8(rcpt):
    m = EmailMessage(policy=policy.SMTPUTF8)
    m["From"] = "Jörg Müller <jörg@remote.test>"
    m["To"] = rcpt
    m["Subject"] = "Grüße aus Köln ✉"
    m["Date"] = "Sun, 22 Nov 2026 10:05:00 +0000"
    m["Message-ID"] = "<smtplib-utf8@remote.test>"
    m.set_content("Schöne Grüße — 日本語のテキスト.\n.Punkt am Anfang\n", cte="8bit")
    return m.as_bytes()


def main():
    host, port, outdir, a, b = sys.argv[1:6]
    cases = [
        ("one-store", "bob@remote.test", [a], plain([a]), []),
        ("two-stores", "bob@remote.test", [a, b], plain([a, b]), []),
        ("smtputf8", "jörg@remote.test", [a], utf8(a), ["SMTPUTF8", "BODY=8BITMIME"]),
    ]
    manifest = []
    for name, sender, rcpts, data, opts in cases:
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        path = os.path.join(outdir, name + ".eml")
        with open(path, "wb") as f:
            f.write(data)
        manifest.append({"name": name, "file": path, "from": sender, "rcpts": rcpts})
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        for name, sender, rcpts, data, opts in cases:
            with open(os.path.join(outdir, name + ".eml"), "rb") as f:
                data = f.read()
            refused = s.sendmail(sender, rcpts, data, mail_options=opts)
            if refused:
                sys.exit("%s: refused %r" % (name, refused))
            print("sent", name)


if __name__ == "__main__":
    main()
