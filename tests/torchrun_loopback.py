"""`python -m torch.distributed.run`, with its rendezvous store listening on the master address only.

torch's TCPStore server binds every interface whatever `--master-addr` says. For tests on a shared
machine this launcher hands it a socket already bound to `--master-addr` (127.0.0.1), so nothing
listens beyond the loopback interface; set `GLOO_SOCKET_IFNAME=lo` for the workers' gloo sockets.
Usage: python torchrun_loopback.py --nproc-per-node 2 --master-addr 127.0.0.1 --master-port P script.py ...
"""
import socket, sys

import torch.distributed as dist
import torch.distributed.elastic.rendezvous.static_tcp_rendezvous as static_rdzv
from torch.distributed.run import main


def loopback_tcp_store(host_name, port, world_size=None, is_master=False, *args, **kw):
    "A TCPStore whose server (on the master) listens on `host_name` alone."
    if is_master:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host_name, port)); s.listen(128)
        kw['master_listen_fd'] = s.detach()                  # the store owns the descriptor from now on
    return dist.TCPStore(host_name, port, world_size, is_master, *args, **kw)


static_rdzv.TCPStore = loopback_tcp_store

if __name__ == '__main__': sys.exit(main())
