# Shared by benches/load.sh and benches/soak.sh (sourced): an nginx configuration for a
# loopback origin run from a temp folder.
#
# nginx_conf DIR LEVEL SERVERS: prints a configuration that keeps every file under DIR (pid,
# error log at LEVEL, temp paths; DIR/tmp must exist), runs in the foreground with one worker,
# logs no access, keeps client connections for as many requests as they like, and serves the
# server blocks in SERVERS (nginx syntax). As root, workers run as root (they read DIR).
nginx_conf() {
  local dir=$1 level=$2 servers=$3
  cat <<EOF
$( [[ $(id -u) == 0 ]] && echo 'user root;' )
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log $level;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
$servers
}
EOF
}
