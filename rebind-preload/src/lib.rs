//! `rebind.so`: placeholder until the wrap-mode issue lands.
