# Shared by benches/load.sh and benches/conns_rss.sh (sourced): the openssl PKI of the
# intercepted-TLS benches, so that tollgate intercepts with a CA the agent trusts and reaches an
# HTTPS origin it can verify.
#
# bench_pki DIR OPENSSL: writes to DIR two CAs (EC P-256, 2 days): the origin's CA
# (origin-ca.pem; tollgate's upstream.ca) with nginx's certificate for IP 127.0.0.1
# (origin.pem, origin-key.pem), and the interception CA (intercept-ca.pem,
# intercept-ca-key.pem; tollgate's intercept_ca, trusted by the agent). openssl 3 writes
# PKCS#8 keys, as intercept_ca.key needs. openssl's messages go to DIR/openssl.log; returns
# non-zero on the first failure.
bench_pki() {
  local d=$1 openssl=$2
  mkdir -p "$d"
  "$openssl" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=bench origin CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$d/origin-ca-key.pem" -out "$d/origin-ca.pem" 2>"$d/openssl.log" || return 1
  "$openssl" req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
    -keyout "$d/origin-key.pem" -out "$d/origin.csr" 2>>"$d/openssl.log" || return 1
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/origin.ext"
  "$openssl" x509 -req -in "$d/origin.csr" -CA "$d/origin-ca.pem" -CAkey "$d/origin-ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$d/origin.ext" -out "$d/origin.pem" 2>>"$d/openssl.log" || return 1
  "$openssl" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=bench interception CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$d/intercept-ca-key.pem" -out "$d/intercept-ca.pem" 2>>"$d/openssl.log" || return 1
}
