#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Fetch a token from tokenbrokerd over its Unix socket with requests, then
call an API with it; or let the broker call the API (its proxy route), so
this program never holds the token.

    python3 broker_token.py NAME [API_URL]
    python3 broker_token.py NAME /PATH     # GET the provider's api_url + /PATH through the broker

The socket is $TOKENBROKER_SOCKET, else /run/tokenbroker/tokenbroker.sock.
Debian 12: apt install python3-requests (requests-unixsocket is not in
Debian: a ten-line HTTPAdapter does the same). The token is never printed.
"""
import os
import socket
import sys
import urllib.parse

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

SOCKET = os.environ.get("TOKENBROKER_SOCKET") or "/run/tokenbroker/tokenbroker.sock"


class UnixConnection(HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(SOCKET)


class UnixPool(HTTPConnectionPool):
    ConnectionCls = UnixConnection


class UnixAdapter(HTTPAdapter):
    """http://broker/... goes to the broker's socket."""

    def get_connection(self, url, proxies=None):
        return UnixPool("localhost", timeout=30)

    # requests >= 2.32 asks this one instead
    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return UnixPool("localhost", timeout=30)


def broker_token(session, name, min_ttl=60):
    r = session.get("http://broker/v1/connections/%s/token" % urllib.parse.quote(name, safe=""),
                    params={"min_ttl": min_ttl}, timeout=60)
    if r.status_code != 200:
        err = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        sys.exit("broker: HTTP %d %s" % (r.status_code, err.get("error_description") or err.get("error") or ""))
    return r.json()


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: broker_token.py NAME [API_URL | /PATH]")
    broker = requests.Session()
    broker.mount("http://broker/", UnixAdapter())
    if len(sys.argv) == 3 and sys.argv[2].startswith("/"):
        r = broker.get("http://broker/v1/connections/%s/proxy%s" % (urllib.parse.quote(sys.argv[1], safe=""),
                                                                    sys.argv[2]), timeout=60)
        print("GET %s through the broker -> HTTP %d" % (sys.argv[2], r.status_code))
        print(r.text)
        return
    tok = broker_token(broker, sys.argv[1])
    print("token of %s: expires in %s s" % (sys.argv[1], tok.get("expires_in", "?")))
    if len(sys.argv) == 3:
        # "headers" (and "query") carry the token as the provider's usage rule says
        api = requests.get(sys.argv[2], headers=tok.get("headers") or {}, params=tok.get("query") or {}, timeout=30)
        print("GET %s -> HTTP %d" % (sys.argv[2], api.status_code))
        print(api.text)


if __name__ == "__main__":
    main()
