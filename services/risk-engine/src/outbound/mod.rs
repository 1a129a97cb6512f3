pub mod postgres;
pub mod redis;
pub mod rules_file;
