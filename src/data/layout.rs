//! The dataset layouts pmad reads, each into the same [`ClassData`] (training images and
//! labelled test items):
//!
//! ```text
//! mvtec   ROOT/CLASS/train/good, test/good, test/DEFECT, ground_truth/DEFECT/STEM_mask.png
//! folder  DIR/good, DIR/bad, optional DIR/masks/STEM.png or STEM_mask.png (DIR is one class)
//! visa    ROOT/split_csv/1cls.csv: object,split,label,image,mask (paths relative to ROOT)
//! btad    ROOT/CLASS/train/ok, test/ok, test/ko, ground_truth/ko/STEM.png (or .bmp)
//! ```
//!
//! `--layout auto` picks the one layout whose marker is present (`good/`, `split_csv/1cls.csv`,
//! `CLASS/train/good`, `CLASS/train/ok`) and refuses to guess when several or none are. Every
//! reader checks the whole dataset up front, like the MVTec reader, and fails naming the file.

mod folder;
mod visa;

use super::dataset::{ClassData, MVTEC, Tree, list_classes_in};
use crate::error::{Error, Result};
use std::path::Path;

/// VisA's split file, relative to the root.
pub const VISA_CSV: &str = visa::CSV;

/// BTAD: `ok` for normal images, masks named like their image.
pub const BTAD: Tree = Tree {
    normal: "ok",
    mask_suffix: "",
};

/// A dataset layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Mvtec,
    Folder,
    Visa,
    Btad,
}

/// `--layout`: one layout, or `auto` (detect it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayoutChoice {
    #[default]
    Auto,
    Fixed(Layout),
}

impl Layout {
    pub const ALL: [Layout; 4] = [Layout::Mvtec, Layout::Folder, Layout::Visa, Layout::Btad];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Mvtec => "mvtec",
            Layout::Folder => "folder",
            Layout::Visa => "visa",
            Layout::Btad => "btad",
        }
    }

    /// What marks a dataset of this layout (for messages).
    fn marker(self) -> &'static str {
        match self {
            Layout::Mvtec => "CLASS/train/good",
            Layout::Folder => "good/",
            Layout::Visa => "split_csv/1cls.csv",
            Layout::Btad => "CLASS/train/ok",
        }
    }

    /// Lists and checks class `class` of the dataset at `root`: its training images and its
    /// test set. For `folder`, `root` is the class's own folder and `class` the name to
    /// register or evaluate it as.
    pub fn open(self, root: &Path, class: &str) -> Result<ClassData> {
        match self {
            Layout::Mvtec => ClassData::open_tree(root, class, MVTEC),
            Layout::Btad => ClassData::open_tree(root, class, BTAD),
            Layout::Folder => folder::open(root, class, true),
            Layout::Visa => visa::open(root, class, true),
        }
    }

    /// Lists and checks only the training images (what registration reads); `test` is empty.
    pub fn open_train(self, root: &Path, class: &str) -> Result<ClassData> {
        match self {
            Layout::Mvtec => ClassData::open_tree_train(root, class, MVTEC),
            Layout::Btad => ClassData::open_tree_train(root, class, BTAD),
            Layout::Folder => folder::open(root, class, false),
            Layout::Visa => visa::open(root, class, false),
        }
    }

    /// Whether `root` carries this layout's marker (for `class`, where the layout has classes
    /// as folders; any class when `class` is `None`).
    fn matches(self, root: &Path, class: Option<&str>) -> Result<bool> {
        let tree = |t: Tree| -> Result<bool> {
            Ok(match class {
                Some(c) => root.join(c).join("train").join(t.normal).is_dir(),
                None => !list_classes_in(root, t)?.is_empty(),
            })
        };
        match self {
            Layout::Mvtec => tree(MVTEC),
            Layout::Btad => tree(BTAD),
            Layout::Folder => Ok(root.join(folder::GOOD_DIR).is_dir()),
            Layout::Visa => Ok(root.join(visa::CSV).is_file()),
        }
    }
}

impl std::str::FromStr for LayoutChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "auto" {
            return Ok(LayoutChoice::Auto);
        }
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .map(LayoutChoice::Fixed)
            .ok_or_else(|| format!("unknown layout '{s}' (mvtec | folder | visa | btad | auto)"))
    }
}

impl LayoutChoice {
    /// The layout to read `root` with for `classes`: the fixed one, or the one detected.
    pub fn resolve(self, root: &Path, classes: &[String]) -> Result<Layout> {
        if let LayoutChoice::Fixed(l) = self {
            return Ok(l);
        }
        if !root.is_dir() {
            return Err(Error::format(root, "dataset root folder not found"));
        }
        // The class's own folder first (a root may hold MVTec and BTAD classes side by
        // side), then any class: an unknown class is then reported by its layout's reader.
        let mut found = Vec::new();
        for class in [classes.first().map(String::as_str), None] {
            for l in Layout::ALL {
                if l.matches(root, class)? && !found.contains(&l) {
                    found.push(l);
                }
            }
            if !found.is_empty() {
                break;
            }
        }
        match found[..] {
            [l] => Ok(l),
            [] => Err(Error::format(
                root,
                format!(
                    "cannot tell the dataset layout: none of {} found; pass --layout \
                     mvtec|folder|visa|btad",
                    Layout::ALL
                        .map(|l| format!("{} ({})", l.marker(), l.name()))
                        .join(", ")
                ),
            )),
            _ => Err(Error::format(
                root,
                format!(
                    "ambiguous dataset layout: it looks like {}; pass --layout to choose",
                    found
                        .iter()
                        .map(|l| l.name())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            )),
        }
    }

    /// Resolves the layout and opens every class (all checked before any work). A folder
    /// dataset is one class.
    pub fn open_all(
        self,
        root: &Path,
        classes: &[String],
        train_only: bool,
    ) -> Result<Vec<ClassData>> {
        let layout = self.resolve(root, classes)?;
        if layout == Layout::Folder && classes.len() != 1 {
            return Err(Error::invalid(format!(
                "{}: a folder dataset is one class; name it with one class, not {}",
                root.display(),
                classes.len()
            )));
        }
        classes
            .iter()
            .map(|c| match train_only {
                true => layout.open_train(root, c),
                false => layout.open(root, c),
            })
            .collect()
    }
}
