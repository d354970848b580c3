-- wrk script for benches/load.sh: talk to a forward proxy the way a plain-HTTP client does.
-- wrk connects to the proxy's port (the URL given on its command line); every request carries
-- the absolute-form target and the origin's Host. load.sh replaces @URL@ and @HOST@.
wrk.method = "GET"
wrk.path = "@URL@"
wrk.headers["Host"] = "@HOST@"
