//! Cloud sync: the edge link a site's leader keeps open (`link`), the
//! `gantry hub` server the links talk to (`hub`), the MQTT form of the link
//! (`mqtt`), and the status view both ends agree on (`site_view`).

pub mod hub;
pub mod link;
pub mod mqtt;
pub mod site_view;
