//! waltool
