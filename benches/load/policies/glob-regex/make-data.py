"""Writes data.json for the glob-regex bench policy: 1,000 agents with four glob/regex rules
each; the bench caller (spiffe://tollgate.local/dev/agent) is one of them, and its third rule
matches the load's requests (GET http://127.0.0.1:PORT/hello)."""
import json
import sys


def rules(i):
    return [
        {"id": "openai", "host": "api.openai.com", "path": "^/v1/"},
        {"id": "gists", "host": "*.github.com", "path": "^/gists/[0-9a-f]+$"},
        {"id": "loopback", "host": "127.0.0.*", "path": "^/(hello|org-%d/)" % i},
        {"id": "any-s3", "host": "s3.*.amazonaws.com", "path": "^/"},
    ]


agents = {"spiffe://tollgate.local/dev/agent": {"rules": rules(0)}}
for i in range(1, 1000):
    agents["spiffe://tollgate.local/ns/agents/sa/agent-%05d" % i] = {"rules": rules(i)}
json.dump({"scale": {"agents": agents}}, open(sys.argv[1], "w"))
