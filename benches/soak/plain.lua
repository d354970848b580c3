-- wrk script for benches/soak.sh: the plain-forward part of the soak's load.
-- wrk connects to the proxy's port; every request carries the absolute-form target and the
-- origin's Host (soak.sh replaces @URL@, @HOST@, @DELAY_MS@ and @OUT@). delay() paces each
-- connection (wrk has no rate option), so the rate stays moderate on a shared machine.
-- Every response's status, decision id and echoed revision go to @OUT@, one line
-- each, so the soak can check that every answered request has its decision-log line.
wrk.method = "GET"
wrk.path = "@URL@"
wrk.headers["Host"] = "@HOST@"

-- soak.sh runs wrk with one thread (-t1): one output file.
local out = nil

function init(args)
  out = io.open("@OUT@", "w")
end

function delay()
  return @DELAY_MS@
end

function response(status, headers, body)
  local id = headers["x-tollgate-decision-id"] or headers["X-Tollgate-Decision-Id"] or "-"
  local rev = headers["x-soak-rev"] or "-"
  out:write(status, " ", id, " ", rev, "\n")
  out:flush()
end
