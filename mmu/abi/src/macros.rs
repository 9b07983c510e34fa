//! Internal helper macros: typed enums over raw ABI numbers, their error
//! types, and the `AbiBytes` glue.

/// Defines a small `Copy` error struct that holds the rejected raw value.
macro_rules! raw_error {
    (
        $(#[$meta:meta])*
        $name:ident($ty:ty), $fmt:literal
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub $ty);

        impl $name {
            /// The raw value that was rejected.
            #[must_use]
            pub const fn raw(self) -> $ty {
                self.0
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, $fmt, self.0)
            }
        }

        impl core::error::Error for $name {}
    };
}

/// Defines a field-less `#[repr(int)]` enum over ABI numbers with
/// `ALL`, `raw()`, `name()`, `from_raw()`, `Display` (symbolic name) and
/// `From<Enum> for repr`. `TryFrom` is added separately (see
/// `abi_try_from!`) because some enums decode from a wider or masked value.
macro_rules! abi_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident, raw $raw:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr => $sym:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in declaration (ascending numeric) order.
            pub const ALL: &'static [Self] = &[ $( Self::$variant, )+ ];

            /// The raw ABI number of this variant.
            #[must_use]
            pub const fn raw(self) -> $repr {
                self as $repr
            }

            /// The symbolic ABI name of this variant.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $sym, )+
                }
            }

            /// Decodes a raw number exactly (no masking); `None` if unknown.
            #[must_use]
            pub const fn from_raw(value: $raw) -> Option<Self> {
                $(
                    if value == Self::$variant as $raw {
                        return Some(Self::$variant);
                    }
                )+
                None
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> $repr {
                value as $repr
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// `TryFrom<raw>` through `from_raw`, returning `err(raw)` on failure.
macro_rules! abi_try_from {
    ($name:ident, $raw:ty, $err:ident) => {
        impl TryFrom<$raw> for $name {
            type Error = $err;

            fn try_from(value: $raw) -> Result<Self, $err> {
                match Self::from_raw(value) {
                    Some(v) => Ok(v),
                    None => Err($err(value)),
                }
            }
        }
    };
}

/// Implements [`crate::AbiBytes`] by delegating to the inherent
/// `from_bytes` / `to_bytes` methods, and adds the `SIZE` constant.
macro_rules! impl_abi_bytes {
    ($t:ty, $n:expr) => {
        impl $t {
            /// Size of the ABI representation in bytes.
            pub const SIZE: usize = $n;
        }

        impl $crate::AbiBytes<{ $n }> for $t {
            fn from_bytes(bytes: &[u8; $n]) -> Self {
                <$t>::from_bytes(bytes)
            }

            fn to_bytes(&self) -> [u8; $n] {
                <$t>::to_bytes(self)
            }
        }
    };
}
