"""The host's side of the guest agent: the client (vsock JSON lines), collecting a guest into a recording,
and completing its memmap with the kernel's allocations (numpy).

Host only: none of this is copied into the guest image (``firecracer.guest`` is).
"""
