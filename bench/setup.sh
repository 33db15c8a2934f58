#!/bin/sh
# The peers' servers for `make bench`: ZooKeeper (with Java 17), etcd and Redis
# from Debian. Installs only what is missing; the benchmark starts each server
# itself, on loopback, in a temporary directory, and stops it afterwards.
# Distribution services are not enabled or started.
set -eu

needed=""
for pair in zookeeper:/usr/share/java/zookeeper.jar \
            openjdk-17-jre-headless:/usr/lib/jvm/java-17-openjdk-amd64/bin/java \
            etcd-server:/usr/bin/etcd \
            redis-server:/usr/bin/redis-server; do
    package=${pair%%:*}
    path=${pair#*:}
    [ -e "$path" ] || needed="$needed $package"
done
[ -z "$needed" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/setup.sh: missing$needed; run it as root (or: sudo apt-get install$needed)" >&2
    exit 1
fi
echo "bench/setup.sh: installing$needed"
# policy-rc.d keeps the packages' own services from starting on install.
policy=/usr/sbin/policy-rc.d
created_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=yes
fi
trap 'if [ "$created_policy" = yes ]; then rm -f "$policy"; fi' EXIT
# Another apt run may hold the lock for a while: wait for it rather than fail.
apt="apt-get -o DPkg::Lock::Timeout=900"
$apt update -qq
DEBIAN_FRONTEND=noninteractive $apt install -y -qq --no-install-recommends $needed >/dev/null
