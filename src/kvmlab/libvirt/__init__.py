"""kvmlab's libvirt adapter: the only package that imports libvirt."""
