//! Jobs under watch: a command started in a cgroup of its own so that the probes see it from
//! its first instruction ([`run`]), optionally inside a [`sandbox`] (bubblewrap, a per-job
//! user, Landlock through the `monitor-sandbox` helper), telling the watcher which phase it is
//! in over a [`control`] pipe, its events shown to people or programs by [`render`].

pub mod control;
pub mod render;
pub mod run;
pub mod sandbox;
