"""CTDB's own client protocol, as Samba 4.17's ctdbd speaks it on its Unix socket
(samba-team/samba ``ctdb/protocol/``): the packets (:mod:`.packet`) and the data of the
controls and messages (:mod:`.marshal`). Pure encoding and decoding, length-checked; the
server that answers them is :mod:`pyctdb.server.ctdbsocket`."""
