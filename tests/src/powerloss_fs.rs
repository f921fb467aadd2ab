//! An in-memory FUSE filesystem that loses, on command, everything a power
//! loss may lose: the worst case POSIX allows, for the power-loss test.
//!
//! # The model
//! Each file has *current* content (what reads see) and *durable* content
//! (what the disk holds). `fsync`/`fdatasync` on a file makes its current
//! content, including its length, durable. Nothing else does: closing a
//! file, a rename or another file's sync leave it as it was.
//!
//! Each folder likewise has current and durable *entries* (name → inode).
//! Creating, renaming, unlinking a file and making or removing a folder
//! change only the current entries of the folders involved; they become
//! durable when that folder is synced (`fsync` on the folder, which FUSE
//! delivers as `fsyncdir`). A rename between two folders is durable in each
//! when each is synced. A new file's data may therefore be durable while
//! its name is not, and the other way round (a durable name whose data was
//! never synced comes back empty): exactly the zero-length files real
//! filesystems leave behind.
//!
//! [`PowerLoss::power_cut`] reverts every file and folder to its durable
//! state and forgets the files no durable entry reaches. Call it only while
//! no process has a file open on the mount (after the broker was killed and
//! reaped), as after a real power loss.
//!
//! Simplifications, none of which the broker relies on: permissions, owners
//! and times are not reverted; hard links, symbolic links, extended
//! attributes and POSIX locks are not supported (`flock`, which sled uses,
//! is handled by the kernel for a FUSE filesystem that does not claim it).
//!
//! The kernel must not cache what a power cut changes behind its back, so
//! every reply has a zero time-to-live and files are opened with direct I/O
//! (no page cache).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::ZERO;

#[derive(Debug)]
enum Content {
    File {
        current: Vec<u8>,
        durable: Vec<u8>,
        /// Pages whose current bytes may differ from the durable ones.
        dirty: BTreeSet<u64>,
    },
    Dir {
        current: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug)]
struct Node {
    content: Content,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

/// Counts of what the filesystem was asked to do, for the test's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub file_syncs: u64,
    pub folder_syncs: u64,
    pub power_cuts: u64,
    /// Files that existed before a power cut and not after it.
    pub files_lost: u64,
    /// Files whose content a power cut changed.
    pub files_reverted: u64,
}

#[derive(Debug)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    next_fh: u64,
    stats: Stats,
}

impl State {
    fn new() -> Self {
        let root = Node {
            content: Content::Dir { current: BTreeMap::new(), durable: BTreeMap::new() },
            perm: 0o755,
            uid: current_uid(),
            gid: current_gid(),
            mtime: SystemTime::now(),
        };
        Self { nodes: HashMap::from([(INodeNo::ROOT.0, root)]), next_ino: 2, next_fh: 1, stats: Stats::default() }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &n.content {
            Content::File { current, .. } => (FileType::RegularFile, current.len() as u64, 1),
            Content::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind,
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn entries(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::Dir { current, .. }) => Ok(current),
            Some(Content::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Result<Option<u64>, Errno> {
        Ok(self.entries(parent)?.get(name).copied())
    }

    fn add(&mut self, parent: u64, name: &OsStr, content: Content, mode: u32, req: &Request) -> Result<u64, Errno> {
        if self.child(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node =
            Node { content, perm: (mode & 0o7777) as u16, uid: req.uid(), gid: req.gid(), mtime: SystemTime::now() };
        self.nodes.insert(ino, node);
        self.entries(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn file(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut BTreeSet<u64>), Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::File { current, dirty, .. }) => Ok((current, dirty)),
            Some(Content::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let (current, dirty) = self.file(ino)?;
        let old = current.len() as u64;
        current.resize(len as usize, 0);
        mark(dirty, old.min(len), old.max(len));
        Ok(())
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let (current, dirty) = self.file(ino)?;
        let old = current.len() as u64;
        let end = offset + data.len() as u64;
        if end > old {
            current.resize(end as usize, 0);
            mark(dirty, old, end);
        }
        current[offset as usize..end as usize].copy_from_slice(data);
        mark(dirty, offset, end);
        Ok(())
    }

    fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        self.stats.file_syncs += 1;
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::File { current, durable, dirty }) => {
                durable.resize(current.len(), 0);
                for page in std::mem::take(dirty) {
                    let start = (page * PAGE) as usize;
                    let end = (start + PAGE as usize).min(current.len());
                    if start < end {
                        durable[start..end].copy_from_slice(&current[start..end]);
                    }
                }
                Ok(())
            }
            Some(Content::Dir { .. }) => self.sync_dir(ino),
            None => Err(Errno::ENOENT),
        }
    }

    fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        self.stats.folder_syncs += 1;
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::Dir { current, durable }) => {
                durable.clone_from(current);
                Ok(())
            }
            Some(Content::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn power_cut(&mut self) {
        self.stats.power_cuts += 1;
        // What the disk holds: everything reachable through durable entries.
        let mut reachable = BTreeSet::from([INodeNo::ROOT.0]);
        let mut todo = vec![INodeNo::ROOT.0];
        while let Some(ino) = todo.pop() {
            if let Some(Node { content: Content::Dir { durable, .. }, .. }) = self.nodes.get(&ino) {
                for &child in durable.values() {
                    if reachable.insert(child) {
                        todo.push(child);
                    }
                }
            }
        }
        let files_before = self.nodes.values().filter(|n| matches!(n.content, Content::File { .. })).count();
        self.nodes.retain(|ino, _| reachable.contains(ino));
        let files_after = self.nodes.values().filter(|n| matches!(n.content, Content::File { .. })).count();
        self.stats.files_lost += files_before.saturating_sub(files_after) as u64;
        for node in self.nodes.values_mut() {
            match &mut node.content {
                Content::File { current, durable, dirty } => {
                    if current != durable {
                        self.stats.files_reverted += 1;
                    }
                    current.clone_from(durable);
                    dirty.clear();
                }
                Content::Dir { current, durable } => current.clone_from(durable),
            }
        }
    }
}

/// Marks the pages holding bytes `from..to` as differing from the durable content.
fn mark(dirty: &mut BTreeSet<u64>, from: u64, to: u64) {
    if from < to {
        dirty.extend(from / PAGE..=(to - 1) / PAGE);
    }
}

fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

fn current_gid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::gid(&m)).unwrap_or(0)
}

/// The filesystem as FUSE serves it.
#[derive(Debug)]
struct PowerLossFs {
    state: Arc<Mutex<State>>,
}

impl PowerLossFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("filesystem state")
    }

    fn entry(&self, reply: ReplyEntry, result: Result<u64, Errno>) {
        let st = self.state();
        match result.and_then(|ino| st.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn attr(&self, reply: ReplyAttr, result: Result<u64, Errno>) {
        let st = self.state();
        match result.and_then(|ino| st.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open_handle(&self) -> FileHandle {
        let mut st = self.state();
        st.next_fh += 1;
        FileHandle(st.next_fh)
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerLossFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.state().child(parent.0, name).and_then(|c| c.ok_or(Errno::ENOENT));
        self.entry(reply, found);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr(reply, Ok(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            let mut st = self.state();
            if let Some(len) = size {
                st.set_len(ino.0, len)?;
            }
            let node = st.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(m) = mode {
                node.perm = (m & 0o7777) as u16;
            }
            node.uid = uid.unwrap_or(node.uid);
            node.gid = gid.unwrap_or(node.gid);
            if size.is_some() || mtime.is_some() {
                node.mtime = match mtime {
                    Some(TimeOrNow::SpecificTime(t)) => t,
                    _ => SystemTime::now(),
                };
            }
            Ok(ino.0)
        })();
        self.attr(reply, result);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let dir = Content::Dir { current: BTreeMap::new(), durable: BTreeMap::new() };
        let made = self.state().add(parent.0, name, dir, mode & !umask, req);
        self.entry(reply, made);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let mut st = self.state();
            let ino = st.child(parent.0, name)?.ok_or(Errno::ENOENT)?;
            if matches!(st.nodes.get(&ino).map(|n| &n.content), Some(Content::Dir { .. })) {
                return Err(Errno::EISDIR);
            }
            st.entries(parent.0)?.remove(name);
            Ok(())
        })();
        empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let mut st = self.state();
            let ino = st.child(parent.0, name)?.ok_or(Errno::ENOENT)?;
            if !st.entries(ino)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            st.entries(parent.0)?.remove(name);
            Ok(())
        })();
        empty(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let mut st = self.state();
            let ino = st.child(parent.0, name)?.ok_or(Errno::ENOENT)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return Err(Errno::EINVAL);
            }
            if let Some(target) = st.child(newparent.0, newname)? {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if let Some(Content::Dir { current, .. }) = st.nodes.get(&target).map(|n| &n.content)
                    && !current.is_empty()
                {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            st.entries(parent.0)?.remove(name);
            st.entries(newparent.0)?.insert(newname.to_owned(), ino);
            Ok(())
        })();
        empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let mut st = self.state();
            st.attr(ino.0).ok_or(Errno::ENOENT)?;
            if flags.0 & libc::O_TRUNC != 0 {
                st.set_len(ino.0, 0)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.opened(self.open_handle(), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            let mut st = self.state();
            match st.child(parent.0, name)? {
                Some(_) if flags & libc::O_EXCL != 0 => Err(Errno::EEXIST),
                Some(ino) => {
                    if flags & libc::O_TRUNC != 0 {
                        st.set_len(ino, 0)?;
                    }
                    Ok(ino)
                }
                None => {
                    let file = Content::File { current: Vec::new(), durable: Vec::new(), dirty: BTreeSet::new() };
                    st.add(parent.0, name, file, mode & !umask, req)
                }
            }
        })();
        let attr = result.and_then(|ino| self.state().attr(ino).ok_or(Errno::ENOENT));
        match attr {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), self.open_handle(), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut st = self.state();
        match st.file(ino.0) {
            Ok((current, _)) => {
                let start = (offset as usize).min(current.len());
                let end = (start + size as usize).min(current.len());
                reply.data(&current[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Closing a file makes nothing durable.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.state().sync_file(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().entries(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut st = self.state();
        let listing: Vec<(u64, FileType, OsString)> = match st.entries(ino.0) {
            Ok(entries) => entries.iter().map(|(name, &child)| (child, FileType::RegularFile, name.clone())).collect(),
            Err(e) => return reply.error(e),
        };
        let mut all =
            vec![(ino.0, FileType::Directory, OsString::from(".")), (ino.0, FileType::Directory, "..".into())];
        for (child, _, name) in listing {
            let kind = match st.nodes.get(&child).map(|n| &n.content) {
                Some(Content::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((child, kind, name));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.state().sync_dir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, PAGE as u32, 255, PAGE as u32);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let result = (|| {
            let mut st = self.state();
            let len = st.file(ino.0)?.0.len() as u64;
            if offset + length > len { st.set_len(ino.0, offset + length) } else { Ok(()) }
        })();
        empty(reply, result);
    }
}

/// A mounted power-loss filesystem; unmounted when dropped (also when a
/// test fails), lazily, so a process still inside cannot keep it mounted.
#[derive(Debug)]
pub struct PowerLoss {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl PowerLoss {
    /// Mounts an empty filesystem on `mountpoint` (an existing empty folder).
    pub fn mount(mountpoint: &Path) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::new()));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("powerloss".into())];
        let session = fuser::spawn_mount(PowerLossFs { state: state.clone() }, mountpoint, &config)?;
        Ok(Self { state, mountpoint: mountpoint.to_owned(), session: Some(session) })
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Throws away everything not synced, as a power loss does.
    pub fn power_cut(&self) {
        self.state.lock().expect("filesystem state").power_cut();
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().expect("filesystem state").stats
    }
}

impl Drop for PowerLoss {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            eprintln!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}
