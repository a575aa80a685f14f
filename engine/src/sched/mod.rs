//! Backend selection for new flows: the native Maglev table every node
//! agrees on, which is also the fallback when a plugin cannot answer.

pub mod maglev;
