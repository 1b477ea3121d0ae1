//! keepalived mode: the speaker answers no ARP/NDP itself; it renders keepalived's VRRP configuration from the
//! same candidates and ranks as native mode (`render`, pure) and supervises a real keepalived (`supervise`).

pub mod render;
pub mod run;
pub mod supervise;
