//! Install media and the host files given to guests: what an ISO holds (`iso`), the host's
//! ISO folder (`iso_dir`), whether a file is what it claims to be (`magic`, pure) and the
//! checks of the files a create request names (`files`), and what its install ISO decides
//! (`install`).

pub mod files;
pub mod install;
pub mod iso;
pub mod iso_dir;
pub mod magic;
